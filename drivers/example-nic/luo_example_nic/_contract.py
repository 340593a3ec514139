"""The example pack's contract: what ``luo contract luo-example-nic`` exercises."""

from __future__ import annotations

from importlib import resources
from typing import Any

from luo_core import Device
from luo_core.platform import default_host
from luo_core.testing import Contract
from luo_example_nic._model import CTRL_ENABLE
from luo_example_nic._nic import DRIVER, NicState, transmit


def traffic(dev: Device) -> None:
    transmit(dev, 37)


def snapshot(dev: Device) -> Any:
    """What must survive: the driver's view of its rings, and the registers it owns."""
    nic: NicState = dev.driver_data
    return {
        "mac": nic.mac,
        "tx_tail": nic.tx_tail,
        "tx_packets": nic.tx_packets,
        "ring_size": nic.ring_size,
        "hw_tx_tail": dev.regs["tx_tail"],
        "enabled": bool(dev.regs["ctrl"] & CTRL_ENABLE),
    }


def golden() -> dict[int, bytes]:
    """Records older versions of this pack wrote (regenerate: see README)."""
    folder = resources.files(__package__).joinpath("golden")
    return {v: folder.joinpath(f"nic-state-v{v}.luor").read_bytes() for v in (1, 2)}


def contracts() -> list[Contract]:
    return [
        Contract(
            name=DRIVER,
            machine=default_host,
            devices=["0000:01:00.0", "0000:01:00.1", "0000:02:00.0"],
            workload=traffic,
            snapshot=snapshot,
            capabilities={"golden-records", "concurrent", "traffic-during-prepare"},
            golden=golden(),
        )
    ]
