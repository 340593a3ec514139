"""The virtio-net pack passes its own contract suite (the way a pack author runs it)."""

from __future__ import annotations

from typing import Any

import luo_virtio_net
import pytest

from luo_core.testing import DriverPackContract


class TestVirtioNet(DriverPackContract):
    @pytest.fixture
    def luo_pack(self) -> Any:
        return luo_virtio_net
