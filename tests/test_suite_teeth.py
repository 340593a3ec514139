"""The contract suite fails each broken pack, for the right reason, in words that name it.

One broken pack per mistake (``tests.broken_packs``), each the example NIC
pack with that one mistake.  The example pack itself passes every check (its
own tests run the whole suite: ``drivers/example-nic/tests``).
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable

import pytest

from luo_core.errors import LiveUpdateError
from luo_core.testing import (
    _suite,
    check_blackout_budget,
    check_cancel,
    check_deterministic_across_processes,
    check_frozen_workload,
    check_golden,
    check_no_pickle,
    check_restore_idempotent,
    check_round_trip,
    check_round_trip_across_processes,
)
from luo_core.testing._model import check_random_sequences

Check = Callable[[object], object]
PACKS = "tests.broken_packs"
ACROSS = check_round_trip_across_processes

CANCEL = functools.partial(check_cancel, after="prepare")
CASES: list[tuple[str, Check, str]] = [
    ("Forgetful", check_round_trip, r"changed by the live update.*tx_packets: 37 -> 0"),
    ("SmuggleGlobal", ACROSS, r"lost state across a real kexec.*broken_packs\._SMUGGLED"),
    ("SmuggleClassAttribute", ACROSS, r"lost state.*broken_packs\.ClassHider\.seen"),
    ("SmuggleEnvironment", ACROSS, r"environment was changed: LUO_SMUGGLED_0000_01_00_0"),
    ("SmuggleTempFile", ACROSS, r"kernel code wrote .*luo-smuggled-0000_01_00.0"),
    ("SmuggleById", ACROSS, r"lost state across a real kexec \(tx_packets: 37 -> 0\)"),
    ("SmuggleRegisterObject", ACROSS, r"register ring_size takes an integer of 32 bits, not Nic"),
    ("LeftThread", ACROSS, r"still ran nic 0000:01:00\.0 flush at kexec"),
    ("HashOrder", check_deterministic_across_processes, r"PYTHONHASHSEED=1 and 2.*hash order"),
    ("Noisy", check_deterministic_across_processes, r"record differs between two kernels"),
    ("Pickled", check_no_pickle, r"record\.blob holds a pickle stream"),
    ("SchemaBump", check_golden, r"no migration from v1 to v2"),
    ("MutatingCancel", CANCEL, r"changed by cancel after prepare: tx_packets: 37 -> 0"),
    ("CancelLeavesRegister", CANCEL, r"hardware changed by cancel after prepare: .*ctrl: 1 -> 3"),
    ("ChangesAfterFreeze", check_frozen_workload, r"reclaimed after work asked of it while"),
    ("SlowFreeze", check_blackout_budget, r"over its blackout budget of 10000 µs"),
    ("FlakyRestore", check_random_sequences, r"not reclaimed after kexec"),
    ("ConsumingRestore", check_restore_idempotent, r"could not be restored a second time"),
    ("SwallowingRestore", check_round_trip, r"cannot be observed after .*half restored"),
]  # fmt: skip


@pytest.mark.parametrize(("pack", "check", "reason"), CASES, ids=[c[0] for c in CASES])
def test_the_suite_catches(pack: str, check: Check, reason: str) -> None:
    with pytest.raises((AssertionError, LiveUpdateError)) as info:
        check(f"{PACKS}:{pack}")
    assert re.search(reason, str(info.value)), str(info.value)
    assert "\n" not in str(info.value).split("Falsifying")[0].strip(), str(info.value)


SMUGGLERS = ["SmuggleGlobal", "SmuggleClassAttribute", "SmuggleEnvironment", "SmuggleTempFile"]


@pytest.mark.parametrize("pack", SMUGGLERS)
def test_state_smuggled_in_this_process_passes_an_in_process_kexec(pack: str) -> None:
    """Why every contract also runs across processes: here, the smuggling works."""
    check_round_trip(f"{PACKS}:{pack}")


def test_every_check_used_here_is_part_of_the_suite() -> None:
    suite = inspect.getsource(_suite.DriverPackContract)
    for _, check, _ in CASES:
        target = check.func if isinstance(check, functools.partial) else check
        assert re.search(rf"\b{target.__name__}\(", suite), target.__name__
