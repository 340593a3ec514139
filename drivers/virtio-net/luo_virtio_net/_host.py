"""The host's virtio-net driver: queues in kernel memory behind an IOMMU domain, kept in place.

``probe`` negotiates features (``virtio_dev_probe``), allocates one region
of kernel memory for both queues and their buffers, maps it 1:1 into a
new IOMMU domain of luo-iommu and attaches the function to it (the DMA API
with an identity IOVA), sets both queues up and posts every receive buffer
(``virtnet_probe``, ``try_fill_recv``), and links ``dmar0`` as the
function's supplier, so that the IOMMU takes part in every live update the
function takes part in.  With no interrupt CPU modelled the host driver
runs in polled mode (``VIRTIO_MSI_NO_VECTOR``): :func:`receive` reaps the
receive queue and :func:`transmit` queues frames, reaping finished ones
first (``free_old_xmit``).  It negotiates VIRTIO_F_IN_ORDER and relies on
it: a transmit descriptor is reused once the device returned it, in order.

For a live update ``prepare`` preserves the region in place with KHO and
hands over a :class:`VirtioNetRecord` (features, the region, the domain, each
queue's addresses and the driver's ring indices); ``freeze`` stops the
driver (:func:`transmit` and :func:`receive` raise ``BusyError``) and hands
over the final indices; the device keeps receiving into the posted buffers
and returning them.  The next kernel's ``restore`` checks the record against
the preserved memory, the IOMMU (restored first, as the function's
supplier) and the device — still DRIVER_OK, the same queue addresses: a
device reset behind the kernel's back is refused — and resumes from the
indices, without resetting the device.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Final

import attrs

from luo_core import Device, DeviceDriverOps, PhysAddr, schema_of, state, u16, u64
from luo_core.abi import MemRange
from luo_core.abi._kho import find_containing
from luo_core.errors import (
    BusyError,
    DeviceError,
    HandoffError,
    LiveUpdateError,
    NotFoundError,
)
from luo_virtio_net._abi import (
    ACKNOWLEDGE,
    BUFFER_SIZE,
    DESC_F_WRITE,
    DRIVER,
    DRIVER_OK,
    F_EVENT_IDX,
    F_IN_ORDER,
    F_MAC,
    F_MTU,
    F_VERSION_1,
    FAILED,
    FEATURES_OK,
    NEEDS_RESET,
    NO_VECTOR,
    OFFERED,
    PACKET_LEN,
    PAGE,
    QUEUE_MAX,
    RX,
    TX,
    RingLayout,
    negotiate,
    notify,
    queue_config,
    read_mac,
    setup_queue,
    write_sync,
)
from luo_virtio_net._guest import frame_seq, tx_packet
from luo_virtio_net._virtqueue import DriverQueue

if TYPE_CHECKING:
    from luo_iommu import Domain, Iommu

    from luo_core import Kernel

DRIVER_NAME: Final = "virtio-net"
HOST_QUEUE: Final = 256
WANTED: Final = 1 << F_VERSION_1 | 1 << F_MAC | 1 << F_MTU | 1 << F_EVENT_IDX | 1 << F_IN_ORDER
V1_BUFFER_SIZE: Final = 128
"""What a v1 driver always posted."""


@attrs.frozen
class QueueRecord:
    """One virtqueue as the driver left it: where its parts are, the driver's indices."""

    index: u16
    size: u16
    desc: PhysAddr
    driver: PhysAddr
    device: PhysAddr
    avail_idx: u16
    last_used: u16


@state(compatible="luo,virtio-net-state", version=2, min_version=1)
class VirtioNetRecord:
    """What one virtio-net function hands to the next kernel.

    v2 added ``buffer_size`` (a v1 driver always posted 128-byte buffers) and
    the frames the driver counted (``None`` when the writer did not count).
    """

    features: u64
    mac: u64
    region: PhysAddr
    region_size: u64
    domain: u16
    queues: list[QueueRecord]
    buffer_size: u16 = BUFFER_SIZE
    rx_frames: u64 | None = None
    tx_frames: u64 | None = None


@schema_of(VirtioNetRecord).migration(from_version=1)
def _v1_to_v2(fields: dict[str, Any]) -> dict[str, Any]:
    return {**fields, "buffer_size": V1_BUFFER_SIZE, "rx_frames": None, "tx_frames": None}


@schema_of(VirtioNetRecord).writes(version=1)
def _v2_as_v1(record: VirtioNetRecord) -> dict[str, Any]:
    if record.buffer_size != V1_BUFFER_SIZE:
        raise DeviceError(f"a v1 driver cannot run buffers of {record.buffer_size} bytes")
    return {
        "features": record.features,
        "mac": record.mac,
        "region": record.region,
        "region_size": record.region_size,
        "domain": record.domain,
        "queues": record.queues,
    }


@attrs.frozen
class HostLayout:
    """The driver's region: receive ring, transmit ring, receive buffers, transmit buffers."""

    region: int
    size: int = HOST_QUEUE

    @property
    def rx(self) -> RingLayout:
        return RingLayout.at(self.region, self.size)

    @property
    def tx(self) -> RingLayout:
        return RingLayout.at(self.rx.end, self.size)

    def rx_buffer(self, index: int) -> int:
        return self.tx.end + index * BUFFER_SIZE

    def tx_buffer(self, index: int) -> int:
        return self.tx.end + (self.size + index) * BUFFER_SIZE

    @property
    def length(self) -> int:
        end = self.tx_buffer(self.size)
        return (end - self.region + PAGE - 1) // PAGE * PAGE


@attrs.define
class QueueState:
    ring: RingLayout
    avail_idx: int = 0
    last_used: int = 0

    def record(self, index: int) -> QueueRecord:
        r = self.ring
        return QueueRecord(
            index, r.size, r.desc, r.driver, r.device, self.avail_idx, self.last_used
        )


@attrs.define
class VirtioNetState:
    """The driver's live state for one function (``dev.driver_data``)."""

    features: int
    mac: int
    mtu: int
    layout: HostLayout
    domain: int
    rx: QueueState
    tx: QueueState
    memory: Any = attrs.field(eq=False, repr=False)
    """This kernel's physical memory, where the queues are."""
    rx_frames: int = 0
    tx_frames: int = 0
    paused: bool = False
    preserved: bool = False
    last_seq: int | None = None

    def record(self) -> VirtioNetRecord:
        return VirtioNetRecord(
            features=self.features,
            mac=self.mac,
            region=self.layout.region,
            region_size=self.layout.length,
            domain=self.domain,
            queues=[self.rx.record(RX), self.tx.record(TX)],
            buffer_size=BUFFER_SIZE,
            rx_frames=self.rx_frames,
            tx_frames=self.tx_frames,
        )


class VirtioNetOps(DeviceDriverOps):
    """The ``virtio-net`` driver of one kernel."""

    def __init__(self, kernel: Kernel | None) -> None:
        self._kernel = kernel

    @property
    def kernel(self) -> Kernel:
        if self._kernel is None:
            raise NotFoundError(f"{DRIVER_NAME}: registered without a kernel")
        return self._kernel

    def _iommu(self) -> Iommu:
        from luo_iommu import iommu_of

        return iommu_of(self.kernel)

    def _link(self, dev: Device, iommu: Iommu) -> None:
        """``dmar0`` supplies this function: it takes part in its updates.

        A machine that declares the link (``Machine.link``, as firmware describes a
        DMAR unit's device scope) has it in every kernel; otherwise probe adds it,
        when the kernel allows (not while an update is being restored), and it lasts
        for that kernel only.
        """
        unit = iommu.dev
        if unit is not None and unit not in dev.suppliers:
            with contextlib.suppress(LiveUpdateError):
                self.kernel.devices.link(unit.name, dev.name)

    # -- binding ------------------------------------------------------------------------

    def probe(self, dev: Device) -> None:
        kernel, regs, name = self.kernel, dev.regs, dev.name
        iommu = self._iommu()
        features = negotiate(regs, WANTED, name)  # the reset stops any DMA first
        self._drop_stale_domain(iommu, name)
        if not features >> F_IN_ORDER & 1:
            write_sync(regs, "device_status", regs["device_status"] | FAILED, name)
            raise DeviceError(f"{name}: the device does not offer VIRTIO_F_IN_ORDER")
        size = HostLayout(0).length
        region = kernel.mm.alloc(size)
        domain: Domain | None = None
        try:
            kernel.memory.fill(region, size)
            layout = HostLayout(region)
            domain = iommu.domain_alloc()
            domain.map(region, region, size)
            iommu.attach(name, domain)
            self._link(dev, iommu)
            event_idx = bool(features >> F_EVENT_IDX & 1)
            rx, tx = (DriverQueue(kernel.memory, r, event_idx) for r in (layout.rx, layout.tx))
            setup_queue(regs, RX, layout.rx, NO_VECTOR, name)
            setup_queue(regs, TX, layout.tx, NO_VECTOR, name)
            for i in range(layout.size):
                rx.set_desc(i, layout.rx_buffer(i), BUFFER_SIZE, DESC_F_WRITE)
                rx.add(i, i)
            rx.publish(0, layout.size & 0xFFFF)
            rx.disable_cb()  # polled: no interrupts
            tx.disable_cb()
            dev.set_bus_master(True)
            write_sync(regs, "device_status", ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK, name)
            if regs["device_status"] & NEEDS_RESET:
                raise DeviceError(f"{name}: the device needs a reset after DRIVER_OK")
        except BaseException:
            write_sync(regs, "device_status", 0, name)
            if domain is not None:
                if name in iommu.attachments():
                    iommu.detach(name)
                iommu.domain_free(domain)
            kernel.mm.free(region)
            raise
        dev.driver_data = VirtioNetState(
            features=features,
            mac=read_mac(regs),
            mtu=regs["mtu"],
            layout=layout,
            domain=domain.id,
            rx=QueueState(layout.rx, avail_idx=layout.size & 0xFFFF),
            tx=QueueState(layout.tx),
            memory=kernel.memory,
        )

    @staticmethod
    def _drop_stale_domain(iommu: Iommu, name: str) -> None:
        """A function probed afresh after an update that did not preserve it may still
        be attached to its previous kernel's domain (``dmar0`` hands every domain over):
        detach it and free that domain if nothing else uses it."""
        stale = iommu.attachments().get(name)
        if stale is None:
            return
        iommu.detach(name)
        domain = iommu.domain(stale)
        if not iommu.attached_to(domain):
            iommu.domain_free(domain)

    def shutdown(self, dev: Device) -> None:
        dev.regs["device_status"] = 0  # reset: the device stops its DMA (no need to wait)

    # -- dev_liveupdate -----------------------------------------------------------------

    def _unprepare(self, net: VirtioNetState) -> None:
        if net.preserved:
            self.kernel.kho.unpreserve(net.layout.region, net.layout.length)
            net.preserved = False

    def prepare(self, dev: Device) -> VirtioNetRecord:
        """Preserve the queues' region in place; hand over where everything is."""
        net: VirtioNetState = dev.driver_data
        self._unprepare(net)  # a freeze that failed before ours ran gets no cancel
        self.kernel.kho.preserve(net.layout.region, net.layout.length)
        net.preserved = True
        return net.record()

    def freeze(self, dev: Device, data: VirtioNetRecord) -> VirtioNetRecord:
        net: VirtioNetState = dev.driver_data
        net.paused = True
        final = net.record()
        return data if final == data else final

    def cancel(self, dev: Device, data: VirtioNetRecord) -> None:
        net: VirtioNetState = dev.driver_data
        net.paused = False
        self._unprepare(net)

    def restore(self, dev: Device, data: VirtioNetRecord) -> None:
        """Check the record against memory, the IOMMU and the device; then take over."""
        kernel, regs, name = self.kernel, dev.regs, dev.name
        if data.features & ~OFFERED or not data.features >> F_IN_ORDER & 1:
            raise HandoffError(f"{name}: features {data.features:#x} this driver cannot run")
        if data.buffer_size != BUFFER_SIZE:
            raise HandoffError(f"{name}: buffers of {data.buffer_size} bytes, not {BUFFER_SIZE}")
        if len(data.queues) != 2 or [q.index for q in data.queues] != [RX, TX]:
            raise HandoffError(f"{name}: the record does not hold receiveq0 and transmitq0")
        size = data.queues[0].size
        if not 0 < size <= QUEUE_MAX or size & (size - 1) or data.queues[1].size != size:
            raise HandoffError(f"{name}: queue sizes {[q.size for q in data.queues]}")
        layout = HostLayout(data.region, size)
        self._check_region(name, layout, data.region_size)
        for q, ring in zip(data.queues, (layout.rx, layout.tx), strict=True):
            if (q.desc, q.driver, q.device) != (ring.desc, ring.driver, ring.device):
                raise HandoffError(f"{name}: queue {q.index} is not where the region puts it")
        self._check_domain(name, layout, data.domain)
        status = regs["device_status"]
        if not status & DRIVER_OK or status & NEEDS_RESET or read_mac(regs) != data.mac:
            raise DeviceError(f"{name}: the device was reset across kexec (status {status:#x})")
        event_idx = bool(data.features >> F_EVENT_IDX & 1)
        queues = []
        for q in data.queues:
            found = queue_config(regs, q.index, name)
            if found != (q.size, q.desc, q.driver, q.device, True):
                raise DeviceError(f"{name}: queue {q.index} is not the one handed over: {found}")
            ring = RingLayout(q.size, q.desc, q.driver, q.device)
            vq = DriverQueue(kernel.memory, ring, event_idx)
            if vq.avail_idx() != q.avail_idx:
                raise HandoffError(f"{name}: queue {q.index}'s avail index is not the record's")
            if (vq.used_idx() - q.last_used) & 0xFFFF > q.size:
                raise HandoffError(f"{name}: queue {q.index}'s used index is past the ring")
            queues.append(QueueState(ring, q.avail_idx, q.last_used))
        dev.driver_data = VirtioNetState(
            features=data.features,
            mac=data.mac,
            mtu=regs["mtu"],
            layout=layout,
            domain=data.domain,
            rx=queues[0],
            tx=queues[1],
            memory=kernel.memory,
            rx_frames=data.rx_frames or 0,
            tx_frames=data.tx_frames or 0,
        )

    def _check_region(self, name: str, layout: HostLayout, length: int) -> None:
        kernel, region = self.kernel, layout.region
        if region % PAGE or length != layout.length or region + length > kernel.memory.size:
            raise HandoffError(f"{name}: region {region:#x}+{length:#x} is not this driver's")
        handed = kernel.kho_in
        preserved = handed.preserved if handed is not None else ()
        if find_containing(preserved, MemRange(region, length)) is None:
            raise HandoffError(f"{name}: region {region:#x}+{length:#x} was not preserved")

    def _check_domain(self, name: str, layout: HostLayout, domain_id: int) -> None:
        iommu = self._iommu()
        try:
            domain = iommu.domain(domain_id)
        except NotFoundError:
            raise HandoffError(f"{name}: IOMMU domain {domain_id} was not handed over") from None
        if iommu.attachments().get(name) != domain_id:
            raise HandoffError(f"{name}: not attached to IOMMU domain {domain_id}")
        covered = any(
            m.iova == m.phys
            and m.iova <= layout.region
            and layout.region + layout.length <= m.iova + m.length
            and m.write
            for m in domain.mappings()
        )
        if not covered:
            raise HandoffError(f"{name}: domain {domain_id} does not map the region 1:1")

    def finish(self, dev: Device, data: Any | None) -> None:
        net = dev.driver_data
        if isinstance(net, VirtioNetState):
            net.preserved = False  # the update is over: prepare preserves again


def _state(dev: Device) -> VirtioNetState:
    net = dev.driver_data
    if not isinstance(net, VirtioNetState):
        raise DeviceError(f"{dev.name}: not bound to {DRIVER_NAME}")
    if net.paused:
        raise BusyError(f"{dev.name}: the driver is frozen for a live update")
    return net


def transmit(dev: Device, frames: int) -> int:
    """Queue ``frames`` frames (reaping finished ones first); how many were queued."""
    net = _state(dev)
    memory = net.memory
    event_idx = bool(net.features >> F_EVENT_IDX & 1)
    vq, layout = DriverQueue(memory, net.tx.ring, event_idx), net.layout
    size = net.tx.ring.size
    used = vq.used_idx()
    if (used - net.tx.last_used) & 0xFFFF > size:
        raise DeviceError(f"{dev.name}: transmit used index {used} is past the ring")
    net.tx.last_used = used  # in order: every descriptor up to here is back
    room = size - (net.tx.avail_idx - net.tx.last_used) & 0xFFFF
    old, sent = net.tx.avail_idx, min(frames, room)
    for _ in range(sent):
        head = net.tx.avail_idx % size
        memory.write(layout.tx_buffer(head), tx_packet(net.tx_frames, net.mac))
        vq.set_desc(head, layout.tx_buffer(head), PACKET_LEN, 0)
        vq.add(net.tx.avail_idx, head)
        net.tx.avail_idx = (net.tx.avail_idx + 1) & 0xFFFF
        net.tx_frames += 1
    if sent and vq.publish(old, net.tx.avail_idx):
        notify(dev.regs, TX)
    return sent


def receive(dev: Device) -> int:
    """Reap the receive queue, count its frames and post the buffers again; how many."""
    net = _state(dev)
    memory = net.memory
    event_idx = bool(net.features >> F_EVENT_IDX & 1)
    vq, layout, size = DriverQueue(memory, net.rx.ring, event_idx), net.layout, net.rx.ring.size
    used = vq.used_idx()
    if (used - net.rx.last_used) & 0xFFFF > size:
        raise DeviceError(f"{dev.name}: receive used index {used} is past the ring")
    old, found = net.rx.avail_idx, 0
    while net.rx.last_used != used:
        head, length = vq.used(net.rx.last_used)
        if head >= size or length > BUFFER_SIZE:
            raise DeviceError(f"{dev.name}: used element {head}/{length} is not a buffer")
        seq = frame_seq(memory.read(layout.rx_buffer(head), length))
        if seq is not None:
            net.last_seq = seq
        vq.add(net.rx.avail_idx, head)
        net.rx.avail_idx = (net.rx.avail_idx + 1) & 0xFFFF
        net.rx.last_used = (net.rx.last_used + 1) & 0xFFFF
        net.rx_frames += 1
        found += 1
    if found and vq.publish(old, net.rx.avail_idx):
        notify(dev.regs, RX)
    return found
