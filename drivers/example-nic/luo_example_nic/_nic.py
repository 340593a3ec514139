"""The example NIC driver: ring indices and counters preserved across kexec.

The NIC's hardware keeps its MAC and its transmit tail in registers, which
survive a kexec.  The driver's software state (counters, the tail it last
wrote) dies with the kernel, so it is serialised in ``prepare``, finalised in
``freeze`` (transmit stops; the device itself keeps running) and rebuilt in
``restore``, which checks it against the registers before taking over.
"""

from __future__ import annotations

import json
import zlib

import attrs

from luo_core import BusyError, Device, DeviceDriverOps, DeviceError

COMPATIBLE = "luo,example-nic"
DRIVER = "example-nic"
STATE_VERSION = 1
RING_SIZE = 256


@attrs.define
class NicState:
    """The driver's private state for one NIC (``dev.driver_data``)."""

    mac: int
    tx_tail: int = 0
    tx_packets: int = 0
    paused: bool = False

    def encode(self) -> bytes:
        fields = attrs.asdict(self)
        del fields["paused"]
        return json.dumps({"v": STATE_VERSION, **fields}, sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> NicState:
        fields = json.loads(data)
        if fields.pop("v", None) != STATE_VERSION:
            raise DeviceError(f"{DRIVER}: unknown state version in {data!r}")
        return cls(**fields)


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

    def prepare(self, dev: Device) -> bytes:
        state: NicState = dev.driver_data
        return state.encode()

    def freeze(self, dev: Device, data: bytes) -> bytes:
        state: NicState = dev.driver_data
        state.paused = True
        return state.encode()

    def cancel(self, dev: Device, data: bytes) -> None:
        state: NicState = dev.driver_data
        state.paused = False

    def restore(self, dev: Device, data: bytes) -> None:
        state = NicState.decode(data)
        regs = dev.hw.regs
        if regs.get("enabled") != 1 or regs.get("mac") != state.mac:
            raise DeviceError(f"{dev.name}: hardware was reset across kexec")
        if regs.get("tx_tail") != state.tx_tail:
            raise DeviceError(
                f"{dev.name}: tx tail {regs.get('tx_tail')} in hardware, "
                f"{state.tx_tail} handed over"
            )
        dev.driver_data = state


def transmit(dev: Device, packets: int) -> None:
    """Queue ``packets`` frames: the driver advances the tail in hardware."""
    state: NicState = dev.driver_data
    if state is None:
        raise DeviceError(f"{dev.name}: not bound to {DRIVER}")
    if state.paused:
        raise BusyError(f"{dev.name}: transmit is paused for a live update")
    state.tx_tail = (state.tx_tail + packets) % RING_SIZE
    state.tx_packets += packets
    dev.hw.regs["tx_tail"] = state.tx_tail
