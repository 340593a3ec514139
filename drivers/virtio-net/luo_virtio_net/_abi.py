"""virtio 1.x as both sides see it: the PCI register file, feature bits, split virtqueues.

Everything here is the bytes and bits a virtio-net device and its drivers
agree on, after Linux's uapi headers:

* ``include/uapi/linux/virtio_pci.h`` ``struct virtio_pci_common_cfg``: the
  common configuration at BAR 0 offset 0 (:data:`VIRTIO_NET_REGISTERS`);
* ``include/uapi/linux/virtio_config.h``: device status bits and
  ``VIRTIO_F_VERSION_1``; ``include/uapi/linux/virtio_net.h``: the net
  feature bits, ``struct virtio_net_config`` and ``struct virtio_net_hdr_v1``;
* ``include/uapi/linux/virtio_ring.h``: ``struct vring_desc`` (16 bytes),
  ``struct vring_avail`` (flags, idx, ring[], used_event), ``struct
  vring_used`` (flags, idx, ring[] of {id, len}, avail_event) and
  ``vring_need_event``.

luo's additions to the register file, which a real device does not need,
are the ``sync``/``sync_ack`` pair (a luo model sees its registers change
only when a doorbell rings, so a driver closes each configuration step by
ringing ``sync`` and waiting for ``sync_ack``, where real hardware would
answer its next MMIO read) and the device's counters.
"""

from __future__ import annotations

import os
import struct
import time
from typing import Final, Protocol

import attrs

from luo_core.errors import DeviceError
from luo_core.platform import Register, RegisterMap

COMPATIBLE: Final = "pci1af4,1041"
"""virtio-net, modern PCI ID: vendor 0x1af4, device 0x1040 + VIRTIO_ID_NET (1)."""

# -- device status (include/uapi/linux/virtio_config.h) --------------------------------
ACKNOWLEDGE: Final = 1
DRIVER: Final = 2
DRIVER_OK: Final = 4
FEATURES_OK: Final = 8
NEEDS_RESET: Final = 0x40
FAILED: Final = 0x80

# -- feature bits ----------------------------------------------------------------------
F_MTU: Final = 3  # VIRTIO_NET_F_MTU
F_MAC: Final = 5  # VIRTIO_NET_F_MAC
F_STATUS: Final = 16  # VIRTIO_NET_F_STATUS
F_EVENT_IDX: Final = 29  # VIRTIO_RING_F_EVENT_IDX
F_VERSION_1: Final = 32  # VIRTIO_F_VERSION_1
F_IN_ORDER: Final = 35  # VIRTIO_F_IN_ORDER
OFFERED: Final = (
    1 << F_MTU | 1 << F_MAC | 1 << F_STATUS | 1 << F_EVENT_IDX | 1 << F_VERSION_1 | 1 << F_IN_ORDER
)
"""What the device offers; anything else a driver acknowledges is refused at FEATURES_OK."""
NET_S_LINK_UP: Final = 1  # VIRTIO_NET_S_LINK_UP

# -- queues ----------------------------------------------------------------------------
RX: Final = 0
TX: Final = 1
NUM_QUEUES: Final = 2
"""receiveq0 and transmitq0: one queue pair, no control queue."""
QUEUE_MAX: Final = 1024
"""The largest queue the device offers (``queue_size`` reads this until the driver writes)."""
NO_VECTOR: Final = 0xFFFF  # VIRTIO_MSI_NO_VECTOR
NOTIFY_BASE: Final = 0x100
NOTIFY_OFF_MULTIPLIER: Final = 4
DEVICE_CFG: Final = 0x200
DEFAULT_MTU: Final = 1500

# -- split virtqueue (include/uapi/linux/virtio_ring.h) --------------------------------
VRING_DESC: Final = struct.Struct("<QIHH")
"""``struct vring_desc``: addr (le64), len (le32), flags (le16), next (le16) — 16 bytes."""
VRING_USED_ELEM: Final = struct.Struct("<II")
"""``struct vring_used_elem``: id (le32), len (le32) — 8 bytes."""
U16: Final = struct.Struct("<H")
DESC_F_NEXT: Final = 1  # VRING_DESC_F_NEXT
DESC_F_WRITE: Final = 2  # VRING_DESC_F_WRITE
DESC_F_INDIRECT: Final = 4  # VRING_DESC_F_INDIRECT (not offered)
AVAIL_F_NO_INTERRUPT: Final = 1  # VRING_AVAIL_F_NO_INTERRUPT
USED_F_NO_NOTIFY: Final = 1  # VRING_USED_F_NO_NOTIFY

# -- what travels: struct virtio_net_hdr_v1 then an Ethernet frame ---------------------
NET_HDR: Final = struct.Struct("<BBHHHHH")
"""``struct virtio_net_hdr_v1``: flags, gso_type, hdr_len, gso_size, csum_start,
csum_offset, num_buffers — 12 bytes, in front of every frame once VERSION_1 is on."""
ETHERTYPE: Final = 0x88B5  # IEEE 802 local experimental ethertype
ETH: Final = struct.Struct("!6s6sH")
PAYLOAD: Final = struct.Struct("<QQ")
"""The frame's payload: the link's sequence number, the time it was sent (ns)."""
FRAME_LEN: Final = 60
"""A minimum-size Ethernet frame (no FCS): header, payload, padding."""
PACKET_LEN: Final = NET_HDR.size + FRAME_LEN
BUFFER_SIZE: Final = 128
"""Bytes of each receive and transmit buffer the drivers post (a header and a short frame)."""
PEER_MAC: Final = 0x02_00_00_00_FE_ED
"""The link partner's MAC (the source of every received frame)."""

VIRTIO_NET_REGISTERS: Final = RegisterMap(
    [
        # struct virtio_pci_common_cfg
        Register("device_feature_select", 0x00, 32, doorbell=True),
        Register("device_feature", 0x04, 32, owner="device"),
        Register("driver_feature_select", 0x08, 32, doorbell=True),
        Register("driver_feature", 0x0C, 32),
        Register("msix_config", 0x10, 16),
        Register("num_queues", 0x12, 16, owner="device"),
        Register("device_status", 0x14, 8, doorbell=True),
        Register("config_generation", 0x15, 8, owner="device"),
        Register("queue_select", 0x16, 16, doorbell=True),
        Register("queue_size", 0x18, 16),
        Register("queue_msix_vector", 0x1A, 16),
        Register("queue_enable", 0x1C, 16, doorbell=True),
        Register("queue_notify_off", 0x1E, 16, owner="device"),
        Register("queue_desc", 0x20, 64),
        Register("queue_driver", 0x28, 64),
        Register("queue_device", 0x30, 64),
        # luo: the configuration handshake and the device's counters
        Register("sync", 0x40, 32, doorbell=True),
        Register("sync_ack", 0x44, 32, owner="device"),
        Register("rx_seq", 0x48, 64, owner="device"),
        Register("rx_frames", 0x50, 64, owner="device"),
        Register("rx_dropped", 0x58, 64, owner="device"),
        Register("tx_frames", 0x60, 64, owner="device"),
        Register("irq_raised", 0x68, 64, owner="device"),
        Register("irq_faults", 0x70, 64, owner="device"),
        Register("dma_errors", 0x78, 64, owner="device"),
        Register("desc_errors", 0x80, 64, owner="device"),
        Register("irq_suppressed", 0x88, 64, owner="device"),
        # notification area: queue n's doorbell at NOTIFY_BASE + n * NOTIFY_OFF_MULTIPLIER
        Register("notify0", NOTIFY_BASE, 16, doorbell=True),
        Register("notify1", NOTIFY_BASE + NOTIFY_OFF_MULTIPLIER, 16, doorbell=True),
        # struct virtio_net_config
        *(Register(f"mac{i}", DEVICE_CFG + i, 8, owner="device") for i in range(6)),
        Register("net_status", DEVICE_CFG + 6, 16, owner="device"),
        Register("max_virtqueue_pairs", DEVICE_CFG + 8, 16, owner="device"),
        Register("mtu", DEVICE_CFG + 10, 16, owner="device"),
    ]
)


def vring_need_event(event_idx: int, new_idx: int, old: int) -> bool:
    """Whether moving an index from ``old`` to ``new_idx`` crosses ``event_idx``
    (``vring_need_event``, include/uapi/linux/virtio_ring.h)."""
    return (new_idx - event_idx - 1) & 0xFFFF < (new_idx - old) & 0xFFFF


@attrs.frozen
class RingLayout:
    """Where one split virtqueue of ``size`` entries lives: its three parts."""

    size: int
    desc: int
    driver: int
    device: int

    @classmethod
    def at(cls, base: int, size: int) -> RingLayout:
        """The three parts laid out from ``base``, each on its own page(s)."""
        desc = base
        driver = desc + _pages(16 * size)
        device = driver + _pages(avail_size(size))
        return cls(size, desc, driver, device)

    @property
    def end(self) -> int:
        return self.device + _pages(used_size(self.size))

    # byte addresses of the fields of struct vring_avail / vring_used
    def avail_idx(self) -> int:
        return self.driver + 2

    def avail_ring(self, slot: int) -> int:
        return self.driver + 4 + 2 * (slot % self.size)

    def used_event(self) -> int:
        return self.driver + 4 + 2 * self.size

    def used_idx(self) -> int:
        return self.device + 2

    def used_ring(self, slot: int) -> int:
        return self.device + 4 + VRING_USED_ELEM.size * (slot % self.size)

    def avail_event(self) -> int:
        return self.device + 4 + VRING_USED_ELEM.size * self.size

    def desc_at(self, index: int) -> int:
        return self.desc + VRING_DESC.size * index


def avail_size(size: int) -> int:
    """``struct vring_avail`` with ``size`` entries and used_event: 6 + 2 * size bytes."""
    return 6 + 2 * size


def used_size(size: int) -> int:
    """``struct vring_used`` with ``size`` entries and avail_event: 6 + 8 * size bytes."""
    return 6 + 8 * size


PAGE: Final = 4096


def _pages(n: int) -> int:
    return (n + PAGE - 1) // PAGE * PAGE


class Memory(Protocol):
    """Memory as a driver reaches it: guest-physical or kernel-physical addresses."""

    def read(self, addr: int, length: int) -> bytes: ...

    def write(self, addr: int, data: bytes) -> None: ...


class Regs(Protocol):
    """The device's BAR 0 as a driver reaches it."""

    def __getitem__(self, name: str) -> int: ...

    def __setitem__(self, name: str, value: int) -> None: ...


def read_u16(mem: Memory, addr: int) -> int:
    value: int = U16.unpack(mem.read(addr, 2))[0]
    return value


def write_u16(mem: Memory, addr: int, value: int) -> None:
    mem.write(addr, U16.pack(value & 0xFFFF))


# -- the driver's side of the configuration ------------------------------------------

SYNC_TIMEOUT_S: Final = 5.0


def sync(regs: Regs, name: str = "virtio-net") -> None:
    """Wait until the device has acted on every register written before this call."""
    want = (regs["sync_ack"] + 1) & 0xFFFF_FFFF
    regs["sync"] = want
    deadline = time.monotonic() + SYNC_TIMEOUT_S
    while regs["sync_ack"] != want:
        if time.monotonic() > deadline:
            raise DeviceError(f"{name}: the device did not acknowledge its configuration")
        os.sched_yield()


def write_sync(regs: Regs, register: str, value: int, name: str = "virtio-net") -> None:
    regs[register] = value
    sync(regs, name)


def device_features(regs: Regs, name: str) -> int:
    """The 64 feature bits the device offers (``vp_modern_get_features``)."""
    found = 0
    for half in (0, 1):
        write_sync(regs, "device_feature_select", half, name)
        found |= regs["device_feature"] << (32 * half)
    return found


def negotiate(regs: Regs, wanted: int, name: str) -> int:
    """Reset the device and negotiate features up to FEATURES_OK (``virtio_dev_probe``,
    drivers/virtio/virtio.c): the features agreed; ``DeviceError`` if refused."""
    write_sync(regs, "device_status", 0, name)  # vp_modern_set_status(mdev, 0): reset
    if regs["device_status"] != 0:
        raise DeviceError(f"{name}: the device did not reset")
    write_sync(regs, "device_status", ACKNOWLEDGE, name)
    write_sync(regs, "device_status", ACKNOWLEDGE | DRIVER, name)
    offered = device_features(regs, name)
    if not offered >> F_VERSION_1 & 1:
        raise DeviceError(f"{name}: a legacy device (features {offered:#x}) is not supported")
    features = offered & wanted
    write_features(regs, features, name)
    write_sync(regs, "device_status", ACKNOWLEDGE | DRIVER | FEATURES_OK, name)
    if not regs["device_status"] & FEATURES_OK:  # virtio_features_ok
        write_sync(regs, "device_status", regs["device_status"] | FAILED, name)
        raise DeviceError(f"{name}: the device refused features {features:#x}")
    return features


def write_features(regs: Regs, features: int, name: str) -> None:
    """``vp_modern_set_features``: both halves, through the select window."""
    for half in (0, 1):
        write_sync(regs, "driver_feature_select", half, name)
        regs["driver_feature"] = features >> (32 * half) & 0xFFFF_FFFF
    sync(regs, name)


def setup_queue(regs: Regs, index: int, ring: RingLayout, vector: int, name: str) -> None:
    """``vp_modern_queue_address`` and friends: size, rings, vector, then enable."""
    write_sync(regs, "queue_select", index, name)
    if regs["queue_enable"]:
        raise DeviceError(f"{name}: queue {index} is already enabled")
    if ring.size > regs["queue_size"]:
        raise DeviceError(f"{name}: queue {index} holds {regs['queue_size']} entries at most")
    regs["queue_size"] = ring.size
    regs["queue_desc"] = ring.desc
    regs["queue_driver"] = ring.driver
    regs["queue_device"] = ring.device
    regs["queue_msix_vector"] = vector
    write_sync(regs, "queue_enable", 1, name)
    if not regs["queue_enable"]:
        raise DeviceError(f"{name}: the device refused queue {index}")
    if regs["queue_msix_vector"] != vector:
        raise DeviceError(f"{name}: queue {index} refused MSI-X vector {vector:#x}")


def queue_config(regs: Regs, index: int, name: str) -> tuple[int, int, int, int, bool]:
    """What the device holds for queue ``index``: size, desc, driver, device, enabled."""
    write_sync(regs, "queue_select", index, name)
    return (
        regs["queue_size"],
        regs["queue_desc"],
        regs["queue_driver"],
        regs["queue_device"],
        bool(regs["queue_enable"]),
    )


def notify(regs: Regs, index: int) -> None:
    """Ring queue ``index``'s doorbell (the notification area, ``vp_notify``)."""
    regs[f"notify{index}"] = index


def read_mac(regs: Regs) -> int:
    return int.from_bytes(bytes(regs[f"mac{i}"] for i in range(6)), "big")
