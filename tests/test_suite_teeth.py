"""The contract suite fails each broken pack, for the right reason, and passes the good one."""

from __future__ import annotations

import re
from collections.abc import Callable

import luo_example_nic
import pytest

from luo_core.errors import LiveUpdateError
from luo_core.testing import (
    check_cancel,
    check_deterministic,
    check_golden,
    check_restore_idempotent,
    check_round_trip,
)
from tests.broken_packs import BROKEN

CASES: list[tuple[str, Callable[[object], None], str]] = [
    ("state lost across kexec", check_round_trip, r"state lost across kexec"),
    (
        "cancel that mutates the device",
        lambda p: check_cancel(p, "prepare"),
        r"changed by cancel after prepare",
    ),
    ("a schema bump without a migration", check_golden, r"no migration from v1 to v2"),
    ("non-deterministic encoding", check_deterministic, r"differs between two identical runs"),
    ("restore that is not idempotent", check_restore_idempotent, r"restored a second time"),
    ("a callback that swallows a fault", check_round_trip, r"cannot be observed.*half restored"),
]


@pytest.mark.parametrize(("mistake", "check", "reason"), CASES, ids=[c[0] for c in CASES])
def test_the_suite_catches(mistake: str, check: Callable[[object], None], reason: str) -> None:
    with pytest.raises((AssertionError, LiveUpdateError)) as info:
        check(BROKEN[mistake])
    assert re.search(reason, str(info.value)), str(info.value)


@pytest.mark.parametrize(("mistake", "check", "reason"), CASES, ids=[c[0] for c in CASES])
def test_the_same_checks_pass_the_example_pack(
    mistake: str, check: Callable[[object], None], reason: str
) -> None:
    check(luo_example_nic)


def test_every_mistake_has_a_case() -> None:
    assert {c[0] for c in CASES} == set(BROKEN)


@pytest.mark.parametrize("mistake", ["state lost across kexec", "cancel that mutates the device"])
def test_the_random_sequence_model_catches(mistake: str) -> None:
    from luo_core.testing._model import check_random_sequences

    with pytest.raises(Exception, match=r"after (kexec|cancel)"):
        check_random_sequences(BROKEN[mistake], examples=50, derandomize=True, shrink=False)
