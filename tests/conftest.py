"""Shared fixtures: a default host, a journal, and a kernel with journalling participants."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from luo_core import Kernel, Machine
from luo_core._logging import reset as reset_logging
from luo_core.platform import default_host
from tests.journal import Journal, JournalPack


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
