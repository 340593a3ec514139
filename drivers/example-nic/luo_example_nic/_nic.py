"""The example NIC driver: it reclaims a running NIC from its registers and its record.

The NIC's hardware keeps its MAC, its rings and its counters in registers,
which keep working through a kexec: frames keep arriving while no kernel runs.
The driver's live state (:class:`NicState`) dies with the kernel, so its
preserved part is declared once as a versioned schema (:class:`NicRecord`):
built in ``prepare``, finalised in ``freeze`` (transmit stops and the
receive counter is noted; the device itself keeps running) and turned back
into live state in ``restore``, which checks it against the registers before
taking over and counts the frames that arrived during the blackout.
"""

from __future__ import annotations

from typing import Any

import attrs

from luo_core import Device, DeviceDriverOps, schema_of, state, u16, u64
from luo_core.errors import BusyError, DeviceError
from luo_example_nic._model import CTRL_ENABLE, DEFAULT_RING

DRIVER = "example-nic"
RING_SIZE = DEFAULT_RING


@state(compatible="luo,example-nic-state", version=3, min_version=1)
class NicRecord:
    """What one NIC hands to the next kernel.

    v2 added ``ring_size``; v3 added ``rx_at_freeze``, the receive counter
    when transmit stopped (``None`` when the writer did not know it).
    """

    mac: u64
    tx_tail: u16
    tx_packets: u64
    ring_size: u16 = RING_SIZE
    rx_at_freeze: u64 | None = None


@schema_of(NicRecord).migration(from_version=1)
def _v1_to_v2(fields: dict[str, Any]) -> dict[str, Any]:
    return {**fields, "ring_size": RING_SIZE}  # v1 drivers always used 256 slots


@schema_of(NicRecord).migration(from_version=2)
def _v2_to_v3(fields: dict[str, Any]) -> dict[str, Any]:
    return {**fields, "rx_at_freeze": None}  # a v2 driver did not note it


@schema_of(NicRecord).writes(version=2)
def _v3_as_v2(record: NicRecord) -> dict[str, Any]:
    return {
        "mac": record.mac,
        "tx_tail": record.tx_tail,
        "tx_packets": record.tx_packets,
        "ring_size": record.ring_size,
    }


@schema_of(NicRecord).writes(version=1)
def _v3_as_v1(record: NicRecord) -> dict[str, Any]:
    if record.ring_size != RING_SIZE:
        raise DeviceError(f"a v1 driver cannot run a ring of {record.ring_size} slots")
    return {"mac": record.mac, "tx_tail": record.tx_tail, "tx_packets": record.tx_packets}


@attrs.define
class NicState:
    """The driver's live state for one NIC (``dev.driver_data``)."""

    mac: int
    tx_tail: int = 0
    tx_packets: int = 0
    ring_size: int = RING_SIZE
    paused: bool = False
    rx_at_freeze: int | None = None
    rx_in_blackout: int | None = None
    """Frames the NIC received between freeze and restore (after a live update)."""

    def record(self) -> NicRecord:
        return NicRecord(
            self.mac, self.tx_tail, self.tx_packets, self.ring_size, self.rx_at_freeze
        )


class NicOps(DeviceDriverOps):
    def probe(self, dev: Device) -> None:
        dev.regs["ring_size"] = RING_SIZE
        dev.regs["tx_tail"] = dev.regs["tx_head"]
        dev.regs["ctrl"] = CTRL_ENABLE
        dev.set_bus_master(True)
        dev.driver_data = NicState(mac=dev.regs["mac"], tx_tail=dev.regs["tx_head"])

    def shutdown(self, dev: Device) -> None:
        dev.regs["ctrl"] = 0

    def prepare(self, dev: Device) -> NicRecord:
        nic: NicState = dev.driver_data
        return nic.record()

    def freeze(self, dev: Device, data: NicRecord) -> NicRecord:
        nic: NicState = dev.driver_data
        nic.paused = True
        nic.rx_at_freeze = dev.regs["rx_frames"]
        return nic.record()

    def cancel(self, dev: Device, data: NicRecord) -> None:
        nic: NicState = dev.driver_data
        nic.paused = False
        nic.rx_at_freeze = None

    def restore(self, dev: Device, data: NicRecord) -> None:
        regs = dev.regs
        if not regs["ctrl"] & CTRL_ENABLE or regs["mac"] != data.mac:
            raise DeviceError(f"{dev.name}: hardware was reset across kexec")
        if regs["tx_tail"] != data.tx_tail:
            raise DeviceError(
                f"{dev.name}: tx tail {regs['tx_tail']} in hardware, {data.tx_tail} handed over"
            )
        received = regs["rx_frames"]
        dev.driver_data = NicState(
            data.mac,
            data.tx_tail,
            data.tx_packets,
            data.ring_size,
            rx_in_blackout=None if data.rx_at_freeze is None else received - data.rx_at_freeze,
        )


def transmit(dev: Device, packets: int) -> None:
    """Queue ``packets`` frames: the driver advances the tail and rings the NIC."""
    nic: NicState = dev.driver_data
    if nic is None:
        raise DeviceError(f"{dev.name}: not bound to {DRIVER}")
    if nic.paused:
        raise BusyError(f"{dev.name}: transmit is paused for a live update")
    if not 0 <= packets < nic.ring_size:
        raise BusyError(f"{dev.name}: {packets} frames do not fit a ring of {nic.ring_size} slots")
    nic.tx_tail = (nic.tx_tail + packets) % nic.ring_size
    nic.tx_packets += packets
    dev.regs["tx_tail"] = nic.tx_tail
