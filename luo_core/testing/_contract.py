"""What a pack tells the contract suite: a host, its devices, a workload, a snapshot.

A pack yields :class:`Contract` records from the ``luo_contracts`` hook; the
suite (``luo contract PACK`` or a subclass of
:class:`~luo_core.testing.DriverPackContract`) boots that host with only that
pack loaded and drives the listed devices through live updates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from luo_core.kernel._records import PluginOrigin
from luo_core.kernel.devices import Device
from luo_core.platform import Machine

CAPABILITIES = {
    "golden-records": "the pack ships records written by older versions (Contract.golden)",
    "concurrent": "its callbacks are safe when independent subtrees run concurrently",
    "traffic-during-prepare": "the workload may run between prepare and freeze",
}
"""Capabilities a contract may declare; each switches on the tests that need it."""


def _capabilities(value: Iterable[str]) -> frozenset[str]:
    found = frozenset(value)
    unknown = found - CAPABILITIES.keys()
    if unknown:
        raise ValueError(f"unknown capabilities {sorted(unknown)}; known: {sorted(CAPABILITIES)}")
    return found


def _devices(value: Iterable[str]) -> tuple[str, ...]:
    found = tuple(value)
    if not found:
        raise ValueError("a contract must name at least one device")
    return found


@attrs.frozen
class Contract:
    """How the contract suite exercises one driver of a pack.

    * ``machine()`` builds a fresh host holding the pack's devices (with any
      bridges they need);
    * ``devices`` are the names to request and check;
    * ``workload(dev)`` drives a bound device in ``normal`` state so that its
      state is not the state it probed with;
    * ``snapshot(dev)`` returns what must survive a live update and be
      unchanged by a cancel (compared with ``==``);
    * ``golden`` maps older record versions to records (sealed bytes) those
      versions wrote, to prove they still restore;
    * the budgets are what ``freeze`` and ``restore`` may cost per device.
    """

    name: str
    machine: Callable[[], Machine]
    devices: tuple[str, ...] = attrs.field(converter=_devices)
    workload: Callable[[Device], None]
    snapshot: Callable[[Device], Any]
    capabilities: frozenset[str] = attrs.field(default=frozenset(), converter=_capabilities)
    golden: Mapping[int, bytes] = attrs.field(factory=dict)
    freeze_budget_us: float = 1000.0
    restore_budget_us: float = 1000.0
    origin: PluginOrigin | None = attrs.field(default=None, eq=False)
