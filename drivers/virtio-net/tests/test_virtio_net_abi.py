"""The bytes both sides agree on, pinned against Linux's uapi headers."""

from __future__ import annotations

import struct

from luo_virtio_net._abi import (
    NET_HDR,
    OFFERED,
    VIRTIO_NET_REGISTERS,
    VRING_DESC,
    VRING_USED_ELEM,
    RingLayout,
    avail_size,
    used_size,
    vring_need_event,
)
from luo_virtio_net._guest import FOOTPRINT


def test_the_common_configuration_is_struct_virtio_pci_common_cfg() -> None:
    """include/uapi/linux/virtio_pci.h: VIRTIO_PCI_COMMON_DFSELECT .. VIRTIO_PCI_COMMON_Q_USEDHI
    (the 64-bit queue addresses are the lo/hi pairs read as one le64)."""
    expected = {
        "device_feature_select": (0, 32),  # VIRTIO_PCI_COMMON_DFSELECT
        "device_feature": (4, 32),  # VIRTIO_PCI_COMMON_DF
        "driver_feature_select": (8, 32),  # VIRTIO_PCI_COMMON_GFSELECT
        "driver_feature": (12, 32),  # VIRTIO_PCI_COMMON_GF
        "msix_config": (16, 16),  # VIRTIO_PCI_COMMON_MSIX
        "num_queues": (18, 16),  # VIRTIO_PCI_COMMON_NUMQ
        "device_status": (20, 8),  # VIRTIO_PCI_COMMON_STATUS
        "config_generation": (21, 8),  # VIRTIO_PCI_COMMON_CFGGENERATION
        "queue_select": (22, 16),  # VIRTIO_PCI_COMMON_Q_SELECT
        "queue_size": (24, 16),  # VIRTIO_PCI_COMMON_Q_SIZE
        "queue_msix_vector": (26, 16),  # VIRTIO_PCI_COMMON_Q_MSIX
        "queue_enable": (28, 16),  # VIRTIO_PCI_COMMON_Q_ENABLE
        "queue_notify_off": (30, 16),  # VIRTIO_PCI_COMMON_Q_NOFF
        "queue_desc": (32, 64),  # VIRTIO_PCI_COMMON_Q_DESCLO/HI
        "queue_driver": (40, 64),  # VIRTIO_PCI_COMMON_Q_AVAILLO/HI
        "queue_device": (48, 64),  # VIRTIO_PCI_COMMON_Q_USEDLO/HI
    }
    found = {r.name: (r.offset, r.width) for r in VIRTIO_NET_REGISTERS}
    assert {name: found[name] for name in expected} == expected


def test_the_device_configuration_is_struct_virtio_net_config() -> None:
    """include/uapi/linux/virtio_net.h: mac[6] at 0, status at 6, max_virtqueue_pairs at 8,
    mtu at 10 (from the device configuration's start)."""
    found = {r.name: r.offset for r in VIRTIO_NET_REGISTERS}
    base = found["mac0"]
    assert [found[f"mac{i}"] - base for i in range(6)] == list(range(6))
    assert (found["net_status"] - base, found["max_virtqueue_pairs"] - base) == (6, 8)
    assert found["mtu"] - base == 10
    assert NET_HDR.size == 12  # struct virtio_net_hdr_v1 (virtio_net_hdr_mrg_rxbuf)


def test_a_split_virtqueue_is_laid_out_as_virtio_ring_h_says() -> None:
    """include/uapi/linux/virtio_ring.h: struct vring_desc {le64 addr; le32 len; le16 flags;
    le16 next;}, struct vring_avail {flags; idx; ring[num]; used_event}, struct vring_used
    {flags; idx; {le32 id; le32 len} ring[num]; avail_event}."""
    assert VRING_DESC.size == 16 and VRING_USED_ELEM.size == 8
    assert VRING_DESC.pack(0x1122334455667788, 0x99AABBCC, 0x0102, 0x0304) == bytes.fromhex(
        "8877665544332211ccbbaa9902010403"
    )
    assert VRING_USED_ELEM.pack(7, 72) == struct.pack("<II", 7, 72)
    ring = RingLayout.at(0x10000, 256)
    assert ring.desc == 0x10000 and ring.desc_at(3) == 0x10000 + 48
    assert ring.driver == ring.desc + 16 * 256  # page-aligned parts, as vring_init's align
    assert (ring.avail_idx() - ring.driver, ring.avail_ring(5) - ring.driver) == (2, 4 + 10)
    assert ring.used_event() - ring.driver == 4 + 2 * 256  # vring_used_event
    assert (ring.used_idx() - ring.device, ring.used_ring(5) - ring.device) == (2, 4 + 40)
    assert ring.avail_event() - ring.device == 4 + 8 * 256  # vring_avail_event
    assert ring.avail_ring(256 + 1) == ring.avail_ring(1)  # indices run free, mod num
    assert (avail_size(256), used_size(256)) == (6 + 512, 6 + 2048)
    assert FOOTPRINT % 4096 == 0 and FOOTPRINT <= 1 << 20


def test_vring_need_event_is_the_kernels() -> None:
    """include/uapi/linux/virtio_ring.h vring_need_event: (u16)(new - event - 1) <
    (u16)(new - old), so an event index crossed between old and new asks for an event."""
    assert vring_need_event(5, 6, 5)  # the entry at 5 was asked for
    assert not vring_need_event(5, 5, 4)  # not reached yet
    assert not vring_need_event(3, 6, 5)  # passed before old: already signalled
    assert vring_need_event(0xFFFF, 1, 0xFFFE)  # across the wrap
    assert not vring_need_event(0, 100, 1)  # Linux's "disabled" event index


def test_the_device_offers_version_1_and_the_features_it_implements() -> None:
    """include/uapi/linux/virtio_config.h VIRTIO_F_VERSION_1 (32), VIRTIO_F_IN_ORDER (35);
    virtio_net.h VIRTIO_NET_F_MTU (3), _MAC (5), _STATUS (16); virtio_ring.h
    VIRTIO_RING_F_EVENT_IDX (29)."""
    assert OFFERED == (1 << 3 | 1 << 5 | 1 << 16 | 1 << 29 | 1 << 32 | 1 << 35)
