"""The example NIC driver: ring indices and counters preserved across kexec.

The NIC's hardware keeps its MAC and its transmit tail in registers, which
survive a kexec.  The driver's live state (:class:`NicState`, counters and the
tail it last wrote) dies with the kernel, so its preserved part is declared
once as a versioned schema (:class:`NicRecord`): built in ``prepare``,
finalised in ``freeze`` (transmit stops; the device itself keeps running) and
turned back into live state in ``restore``, which checks it against the
registers before taking over.
"""

from __future__ import annotations

import zlib
from typing import Any

import attrs

from luo_core import Device, DeviceDriverOps
from luo_core.abi import schema_of, state, u16, u64
from luo_core.errors import BusyError, DeviceError

COMPATIBLE = "luo,example-nic"
DRIVER = "example-nic"
RING_SIZE = 256


@state(compatible="luo,example-nic-state", version=2, min_version=1)
class NicRecord:
    """What one NIC hands to the next kernel.  v2 added ``ring_size``."""

    mac: u64
    tx_tail: u16
    tx_packets: u64
    ring_size: u16 = RING_SIZE


@schema_of(NicRecord).migration(from_version=1)
def _v1_to_v2(fields: dict[str, Any]) -> dict[str, Any]:
    return {**fields, "ring_size": RING_SIZE}  # v1 drivers always used 256 slots


@schema_of(NicRecord).writes(version=1)
def _v2_as_v1(record: NicRecord) -> dict[str, Any]:
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

    def record(self) -> NicRecord:
        return NicRecord(self.mac, self.tx_tail, self.tx_packets, self.ring_size)


def burned_in_mac(name: str) -> int:
    """A stable, locally administered MAC derived from the device name."""
    return 0x02_00_00_00_00_00 | zlib.crc32(name.encode())


class NicOps(DeviceDriverOps):
    def probe(self, dev: Device) -> None:
        dev.hw.regs.update(mac=burned_in_mac(dev.name), tx_tail=0, enabled=1)
        dev.hw.bus_master = True
        dev.driver_data = NicState(mac=dev.hw.regs["mac"])

    def shutdown(self, dev: Device) -> None:
        dev.hw.regs["enabled"] = 0

    def prepare(self, dev: Device) -> NicRecord:
        state: NicState = dev.driver_data
        return state.record()

    def freeze(self, dev: Device, data: NicRecord) -> NicRecord:
        state: NicState = dev.driver_data
        state.paused = True
        final = state.record()
        return data if final == data else final

    def cancel(self, dev: Device, data: NicRecord) -> None:
        state: NicState = dev.driver_data
        state.paused = False

    def restore(self, dev: Device, data: NicRecord) -> None:
        regs = dev.hw.regs
        if regs.get("enabled") != 1 or regs.get("mac") != data.mac:
            raise DeviceError(f"{dev.name}: hardware was reset across kexec")
        if regs.get("tx_tail") != data.tx_tail:
            raise DeviceError(
                f"{dev.name}: tx tail {regs.get('tx_tail')} in hardware, "
                f"{data.tx_tail} handed over"
            )
        dev.driver_data = NicState(data.mac, data.tx_tail, data.tx_packets, data.ring_size)


def transmit(dev: Device, packets: int) -> None:
    """Queue ``packets`` frames: the driver advances the tail in hardware."""
    state: NicState = dev.driver_data
    if state is None:
        raise DeviceError(f"{dev.name}: not bound to {DRIVER}")
    if state.paused:
        raise BusyError(f"{dev.name}: transmit is paused for a live update")
    state.tx_tail = (state.tx_tail + packets) % state.ring_size
    state.tx_packets += packets
    dev.hw.regs["tx_tail"] = state.tx_tail
