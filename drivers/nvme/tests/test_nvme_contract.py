"""The pack passes its own contract suite (the way a pack author runs it)."""

from __future__ import annotations

from typing import Any

import luo_nvme
import pytest

from luo_core.testing import DriverPackContract


class TestNvme(DriverPackContract):
    @pytest.fixture
    def luo_pack(self) -> Any:
        return luo_nvme
