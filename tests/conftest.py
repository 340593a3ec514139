"""Shared fixtures: a default host, a journal, and a kernel with journalling participants."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog

from luo_core import Kernel, Machine
from luo_core.platform import default_host
from tests.journal import Journal, JournalPack


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


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
