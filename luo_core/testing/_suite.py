"""The contract suite as abstract pytest classes a pack author subclasses.

Override one fixture, ``luo_pack`` (your plugin object, usually your pack's
module); every test then runs against each :class:`Contract` it declares.
Tests that need a capability the contract does not declare are skipped with a
message naming that capability.
"""

from __future__ import annotations

from typing import Any

import pytest

from luo_core.testing import _checks, _process
from luo_core.testing._contract import CAPABILITIES

FAULTY = ("prepare", "freeze", "cancel", "restore", "finish")


def require(pack: object, capability: str) -> None:
    """Skip unless every contract of ``pack`` declares ``capability``."""
    missing = [c.name for c in _checks.each_contract(pack) if capability not in c.capabilities]
    if missing:
        pytest.skip(
            f"needs capability {capability!r} ({CAPABILITIES[capability]}); "
            f"not declared by {', '.join(missing)}"
        )


class DriverPackContract:
    """Subclass me in your pack's tests and override ``luo_pack``.

    ``luo_pack`` returns the pack as a kernel configuration names it: a
    ``'module:attr'`` reference, a module, or a class defined at module level
    (the cross-process checks load it in kernels of their own).
    """

    @pytest.fixture
    def luo_pack(self) -> Any:
        raise NotImplementedError("override the luo_pack fixture: return your pack's plugin")

    def test_state_survives_a_real_kexec_across_processes(self, luo_pack: Any) -> None:
        _process.check_round_trip_across_processes(luo_pack)

    def test_state_survives_an_in_process_kexec(self, luo_pack: Any) -> None:
        _checks.check_round_trip(luo_pack)

    @pytest.mark.parametrize("after", ["prepare", "freeze"])
    def test_cancel_leaves_the_device_unchanged_and_working(
        self, luo_pack: Any, after: str
    ) -> None:
        _checks.check_cancel(luo_pack, after)

    def test_work_while_frozen_is_refused_or_handed_over(self, luo_pack: Any) -> None:
        _checks.check_frozen_workload(luo_pack)

    @pytest.mark.parametrize("callback", FAULTY)
    def test_a_fault_in_each_callback_ends_in_a_defined_state(
        self, luo_pack: Any, callback: str
    ) -> None:
        _checks.check_fault(luo_pack, callback)

    @pytest.mark.parametrize("callback", ["prepare", "freeze", "restore"])
    def test_a_callback_hanging_past_its_budget_ends_in_a_defined_state(
        self, luo_pack: Any, callback: str
    ) -> None:
        _checks.check_hang(luo_pack, callback)

    def test_restore_is_idempotent(self, luo_pack: Any) -> None:
        _checks.check_restore_idempotent(luo_pack)

    def test_random_sequences_against_a_model(self, luo_pack: Any) -> None:
        from luo_core.testing._model import check_random_sequences

        check_random_sequences(luo_pack)

    def test_records_are_the_same_whatever_the_hash_seed(self, luo_pack: Any) -> None:
        _process.check_deterministic_across_processes(luo_pack)

    def test_records_hold_no_pickle(self, luo_pack: Any) -> None:
        _checks.check_no_pickle(luo_pack)

    def test_hostile_and_newer_records_give_typed_errors(self, luo_pack: Any) -> None:
        _checks.check_hostile_records(luo_pack)

    def test_older_versions_restore_from_golden_records(self, luo_pack: Any) -> None:
        require(luo_pack, "golden-records")
        _checks.check_golden(luo_pack)

    def test_concurrent_subtrees_give_the_same_result(self, luo_pack: Any) -> None:
        require(luo_pack, "concurrent")
        _checks.check_round_trip(luo_pack, workers=4)

    def test_traffic_during_prepare_reaches_the_next_kernel(self, luo_pack: Any) -> None:
        require(luo_pack, "traffic-during-prepare")
        _checks.check_traffic_during_prepare(luo_pack)

    def test_blackout_stays_within_its_budget(self, luo_pack: Any, record_property: Any) -> None:
        costs = _checks.check_blackout_budget(luo_pack)
        for device, spent in costs.items():
            for phase, us in spent.items():
                record_property(f"{device} {phase} us", round(us, 1))
