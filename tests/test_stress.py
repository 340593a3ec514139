"""Stress: thousands of devices and long random event sequences (``pytest -m slow``)."""

from __future__ import annotations

import pytest
from hypothesis import settings

from luo_core import Kernel
from luo_core.platform import flat_host
from tests.journal import JournalPack
from tests.test_state_model import LiveUpdateModel

pytestmark = pytest.mark.slow
TEST_NIC = "luo,test-nic"  # no device model: the orchestrator is what is stressed here


def update_all(devices: int, workers: int) -> list[tuple[str, bool, bool, object]]:
    kernel = Kernel.boot(
        flat_host(devices, TEST_NIC),
        plugins=[JournalPack([], compatible=TEST_NIC)],
        discover=False,
        workers=workers,
    )
    for i, dev in enumerate(kernel.devices.devices()):
        if dev.compatible == TEST_NIC:
            dev.driver_data["counter"] = i
            kernel.devices.request(dev.name)
    kernel.prepare()
    new = kernel.kexec()
    new.finish()
    return [
        (d.name, d.driver is not None, d.requested, d.driver_data) for d in new.devices.devices()
    ]


def test_largest_flat_host_serial_and_concurrent_agree() -> None:
    serial = update_all(7936, 1)
    assert serial == update_all(7936, 4)
    assert [data for _, _, _, data in serial[32:35]] == [
        {"counter": 32, "paused": False},
        {"counter": 33, "paused": False},
        {"counter": 34, "paused": False},
    ]


class LongModel(LiveUpdateModel):
    pass


LongModel.TestCase.settings = settings(max_examples=1500, stateful_step_count=60, deadline=None)
test_long_random_sequences = LongModel.TestCase
