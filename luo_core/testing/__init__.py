"""The contract suite for driver packs (opt-in pytest plugin: ``-p luo_core.testing``).

Subclass :class:`DriverPackContract` and override ``luo_pack``, or run
``luo contract PACK`` against an installed pack, which needs nothing but the
:class:`Contract` records the pack declares through ``luo_contracts``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from luo_core.testing._checks import (
    blackout_costs,
    check_blackout_budget,
    check_cancel,
    check_fault,
    check_frozen_workload,
    check_golden,
    check_hang,
    check_hostile_records,
    check_no_pickle,
    check_restore_idempotent,
    check_round_trip,
    over_budget,
)
from luo_core.testing._contract import CAPABILITIES, DEFAULT_BLACKOUT_BUDGET_US, Contract
from luo_core.testing._harness import InjectedFault, contracts_of
from luo_core.testing._process import (
    check_deterministic_across_processes,
    check_round_trip_across_processes,
)

if TYPE_CHECKING:
    from luo_core.testing._suite import DriverPackContract

__all__ = [
    "CAPABILITIES",
    "DEFAULT_BLACKOUT_BUDGET_US",
    "Contract",
    "DriverPackContract",
    "InjectedFault",
    "blackout_costs",
    "check_blackout_budget",
    "check_cancel",
    "check_deterministic_across_processes",
    "check_fault",
    "check_frozen_workload",
    "check_golden",
    "check_hang",
    "check_hostile_records",
    "check_no_pickle",
    "check_restore_idempotent",
    "check_round_trip",
    "check_round_trip_across_processes",
    "contracts_of",
    "over_budget",
]


def __getattr__(name: str) -> Any:
    # The pytest classes import pytest; load them only when asked for, so that
    # `luo` itself never needs pytest.
    if name == "DriverPackContract":
        from luo_core.testing._suite import DriverPackContract

        return DriverPackContract
    raise AttributeError(name)


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("luo", "luo contract suite")
    group.addoption(
        "--luo-pack",
        metavar="DIST",
        help=(
            "run the contract suite against this installed pack (its distribution name, "
            "its entry point's name, or the name given to luo new-driver)"
        ),
    )
