"""The IOMMU pack passes luo's contract suite (the way a pack author runs it)."""

from __future__ import annotations

from typing import Any

import luo_iommu
import pytest

from luo_core.testing import DriverPackContract


class TestIommu(DriverPackContract):
    @pytest.fixture
    def luo_pack(self) -> Any:
        return luo_iommu
