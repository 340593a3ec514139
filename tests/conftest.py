"""Shared fixtures: a default host, a journal, a kernel with journalling participants,
and fake installed packs."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from luo_core import Kernel, Machine
from luo_core._logging import reset as reset_logging
from luo_core.platform import default_host
from tests.journal import DistFactory, Journal, JournalPack


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    reset_logging()  # a test that ran the luo command configured it


@pytest.fixture
def journal() -> Journal:
    return []


@pytest.fixture
def pack(journal: Journal) -> JournalPack:
    return JournalPack(journal)


@pytest.fixture
def machine() -> Machine:
    return default_host()


@pytest.fixture
def kernel(machine: Machine, pack: JournalPack) -> Kernel:
    return Kernel.boot(machine, plugins=[pack], discover=False)


@pytest.fixture
def make_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DistFactory]:
    """Install fake packs into ``tmp_path/site``, on ``sys.path`` for the test only."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    factory = DistFactory(site)
    yield factory
    for module in factory.modules:
        sys.modules.pop(module, None)
    importlib.invalidate_caches()
