"""Packs with the mistakes real authors make; the contract suite must catch each one.

Each is the example NIC pack with one thing wrong, registered under the same
driver name and contract, so the only difference is the bug.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import luo_example_nic
from luo_example_nic import COMPATIBLE, DRIVER, NicRecord, NicState
from luo_example_nic._nic import NicOps

from luo_core import Device, DeviceDriver, hookimpl
from luo_core.abi import state, u16, u64
from luo_core.errors import DeviceError
from luo_core.testing import Contract


class BrokenPack:
    """The example pack's driver with ``ops`` (and maybe ``schema``) swapped."""

    ops: type[NicOps] = NicOps
    schema: type[Any] | None = NicRecord

    @hookimpl
    def luo_device_drivers(self) -> Iterator[DeviceDriver]:
        yield DeviceDriver(
            name=DRIVER, compatible=[COMPATIBLE], ops=self.ops(), schema=self.schema
        )

    @hookimpl
    def luo_contracts(self) -> Iterator[Contract]:
        yield from luo_example_nic.luo_contracts()


class ForgetfulRestore(NicOps):
    """Restores the device but not its counters: state lost across kexec."""

    def restore(self, dev: Device, data: NicRecord) -> None:
        dev.driver_data = NicState(mac=data.mac, tx_tail=data.tx_tail)


class CancelThatMutates(NicOps):
    """Cancel 'resets' the counters it should have left alone."""

    def cancel(self, dev: Device, data: NicRecord) -> None:
        super().cancel(dev, data)
        dev.driver_data.tx_packets = 0


@state(compatible="luo,example-nic-state", version=3, min_version=1)
class BumpedRecord:
    """v3 claims to read v1 and v2, but nobody wrote the migrations."""

    mac: u64
    tx_tail: u16
    tx_packets: u64
    ring_size: u16 = 256


class BumpedOps(NicOps):
    def prepare(self, dev: Device) -> BumpedRecord:  # type: ignore[override]
        s = dev.driver_data
        return BumpedRecord(s.mac, s.tx_tail, s.tx_packets, s.ring_size)

    def freeze(self, dev: Device, data: Any) -> Any:
        super().freeze(dev, data)
        return data

    def restore(self, dev: Device, data: Any) -> None:
        super().restore(dev, NicRecord(data.mac, data.tx_tail, data.tx_packets, data.ring_size))


class NoisyOpaque(NicOps):
    """Hands over opaque bytes with a random nonce: not deterministic."""

    def prepare(self, dev: Device) -> bytes:  # type: ignore[override]
        s = dev.driver_data
        return os.urandom(4) + f"{s.mac},{s.tx_tail},{s.tx_packets}".encode()

    def freeze(self, dev: Device, data: Any) -> Any:
        dev.driver_data.paused = True
        return data

    def restore(self, dev: Device, data: bytes) -> None:  # type: ignore[override]
        mac, tail, packets = (int(x) for x in data[4:].decode().split(","))
        dev.driver_data = NicState(mac=mac, tx_tail=tail, tx_packets=packets)


class ConsumingRestore(NicOps):
    """Restore 'acknowledges' the hand-over by clearing a register: not idempotent."""

    def restore(self, dev: Device, data: NicRecord) -> None:
        if dev.hw.regs.get("handed-over") == 0:
            raise DeviceError(f"{dev.name}: already taken over")
        super().restore(dev, data)
        dev.hw.regs["handed-over"] = 0


class SwallowingRestore(NicOps):
    """Restore hits a problem, swallows it and leaves the device half restored."""

    def restore(self, dev: Device, data: NicRecord) -> None:
        try:
            if data.ring_size != 512:
                raise DeviceError("this driver only knows 512-slot rings")
            super().restore(dev, data)
        except DeviceError:
            dev.driver_data = None  # "we will sort it out later"


def pack(ops: type[NicOps], schema: type[Any] | None = NicRecord) -> BrokenPack:
    plugin = BrokenPack()
    plugin.ops, plugin.schema = ops, schema
    return plugin


BROKEN = {
    "state lost across kexec": pack(ForgetfulRestore),
    "cancel that mutates the device": pack(CancelThatMutates),
    "a schema bump without a migration": pack(BumpedOps, BumpedRecord),
    "non-deterministic encoding": pack(NoisyOpaque, None),
    "restore that is not idempotent": pack(ConsumingRestore),
    "a callback that swallows a fault": pack(SwallowingRestore),
}
