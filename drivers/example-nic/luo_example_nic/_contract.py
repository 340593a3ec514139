"""The example pack's contract: what ``luo contract luo-example-nic`` exercises."""

from __future__ import annotations

from importlib import resources
from typing import Any

import attrs

from luo_core import Device
from luo_core.platform import default_host
from luo_core.testing import Contract
from luo_example_nic._nic import DRIVER, NicState, transmit


def traffic(dev: Device) -> None:
    transmit(dev, 37)


def snapshot(dev: Device) -> Any:
    state: NicState = dev.driver_data
    return (attrs.evolve(state), dev.hw.regs.get("tx_tail"), dev.hw.regs.get("enabled"))


def golden() -> dict[int, bytes]:
    """Records older versions of this pack wrote (regenerate: see README)."""
    return {1: resources.files(__package__).joinpath("golden/nic-state-v1.luor").read_bytes()}


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
            freeze_budget_us=200.0,
            restore_budget_us=200.0,
        )
    ]
