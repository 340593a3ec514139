"""The contract suite against an installed pack (``luo contract PACK``)."""

from __future__ import annotations

from importlib import metadata
from typing import Any

import pytest

from luo_core.errors import PluginError
from luo_core.kernel._registry import normalize
from luo_core.platform._models import ENTRY_POINT_GROUP
from luo_core.testing._harness import contracts_of
from luo_core.testing._suite import DriverPackContract


def load_pack(distribution: str) -> str:
    """The entry point (a ``'module:attr'`` reference) of installed ``distribution`` that
    declares contracts: what a kernel, in this process or another, loads the pack from."""
    eps = [
        ep
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)
        if ep.dist is not None and normalize(ep.dist.name) == normalize(distribution)
    ]
    if not eps:
        raise PluginError(f"no installed pack {distribution!r} in the {ENTRY_POINT_GROUP} group")
    for ep in eps:
        if contracts_of(ep.value):
            return ep.value
    raise PluginError(
        f"pack {distribution!r} declares no contract (implement the luo_contracts hook)"
    )


class TestInstalledPack(DriverPackContract):
    @pytest.fixture
    def luo_pack(self, request: pytest.FixtureRequest) -> Any:
        distribution = request.config.getoption("luo_pack")
        if not distribution:
            pytest.skip("pass --luo-pack DIST to run the contract suite on an installed pack")
        return load_pack(distribution)
