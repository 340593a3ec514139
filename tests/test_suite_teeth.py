"""The contract suite fails each broken pack, for the right reason, in words that name it.

One broken pack per mistake (``tests.broken_packs``), each the example NIC
pack with that one mistake.  The example pack itself passes every check (its
own tests run the whole suite: ``drivers/example-nic/tests``).
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

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
from tests import broken_packs

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
    ("SmuggleDirectoryName", ACROSS, r"kernel code wrote .*luo-smuggled-dir-0000_01_00.0 \(mkdir"),
    ("SmuggleSharedMemory", ACROSS, r"kernel code wrote descriptor \d+ \(truncate"),
    ("SmuggleUnusedRegisterSpace", ACROSS, r"offset 0xe00 \(64 bits\) reaches bytes where the"),
    ("SmuggleUnpreservedMemory", ACROSS, r"lost state across a real kexec \(tx_packets: 37 -> 0"),
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


@pytest.fixture(autouse=True)
def _no_smuggled_leftovers() -> Iterator[None]:
    """What the smugglers' kernels leave behind (files, directories, shared memory)
    goes with each test, so that no later run finds it."""
    yield
    shm = Path("/dev/shm")
    leftovers = [*Path(tempfile.gettempdir()).glob("luo-smuggled-*")]
    if shm.is_dir():
        leftovers += shm.glob(f"luo-smuggled-{os.getuid()}-*")
    for leftover in leftovers:
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


@pytest.mark.parametrize(("pack", "check", "reason"), CASES, ids=[c[0] for c in CASES])
def test_the_suite_catches(pack: str, check: Check, reason: str) -> None:
    with pytest.raises((AssertionError, LiveUpdateError)) as info:
        check(f"{PACKS}:{pack}")
    assert re.search(reason, str(info.value)), str(info.value)
    assert "\n" not in str(info.value).split("Falsifying")[0].strip(), str(info.value)


SMUGGLERS = ["SmuggleGlobal", "SmuggleClassAttribute", "SmuggleEnvironment", "SmuggleTempFile"]


@pytest.mark.parametrize("pack", SMUGGLERS)
def test_state_smuggled_in_this_process_passes_an_in_process_kexec(
    pack: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Why every contract also runs across processes: here, the smuggling works."""
    # What the smugglers leave in this process must go with the test: a variable
    # left set would be inherited by the kernels of every later test, and would
    # smuggle for them.
    monkeypatch.setenv("LUO_SMUGGLED_0000_01_00_0", "0")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    check_round_trip(f"{PACKS}:{pack}")


def test_every_check_used_here_is_part_of_the_suite() -> None:
    suite = inspect.getsource(_suite.DriverPackContract)
    for _, check, _ in CASES:
        target = check.func if isinstance(check, functools.partial) else check
        assert re.search(rf"\b{target.__name__}\(", suite), target.__name__


def test_every_broken_pack_has_a_case() -> None:
    """A new mistake in tests/broken_packs.py is not caught until it is listed here."""
    packs = {
        name
        for name, obj in vars(broken_packs).items()
        if isinstance(obj, type) and issubclass(obj, broken_packs.NicPack)
    }
    assert {case[0] for case in CASES} == packs - {"NicPack"}
