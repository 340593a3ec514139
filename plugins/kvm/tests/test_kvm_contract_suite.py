"""The kvm pack passes luo's contract suite (the way a pack author runs it)."""

from __future__ import annotations

from typing import Any

import luo_kvm
import pytest

from luo_core.testing import DriverPackContract


class TestKvm(DriverPackContract):
    @pytest.fixture
    def luo_pack(self) -> Any:
        return luo_kvm
