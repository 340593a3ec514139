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


DEFAULT_BLACKOUT_BUDGET_US = 10_000.0
"""Freeze plus restore per device: ample for an honest pack on a loaded machine."""


def _budget(_instance: object, _attribute: object, value: float) -> None:
    if not (isinstance(value, int | float) and 0 < value <= 10_000_000):
        raise ValueError(f"blackout_budget_us must be in (0, 10 s], not {value!r}")


def _references(value: Iterable[str]) -> tuple[str, ...]:
    refs = (value,) if isinstance(value, str) else tuple(value)
    for ref in refs:
        if not isinstance(ref, str) or not ref:
            raise ValueError(f"requires lists packs as 'module:attr' references, not {ref!r}")
    return refs


@attrs.frozen
class Contract:
    """How the contract suite exercises one driver of a pack.

    * ``machine()`` builds a fresh host description holding the pack's
      devices (with any bridges they need);
    * ``devices`` are the names to request and check;
    * ``workload(dev)`` drives a bound device so that its state is not the
      state it probed with.  It also runs while the update is frozen: there it
      must be refused (raise) or leave what is handed over unchanged;
    * ``snapshot(dev)`` returns what must survive a live update and be
      unchanged by a cancel, as plain data (ints, text, bytes, lists, maps,
      attrs instances); it is taken in the kernel's own process and compared
      across processes;
    * ``golden`` maps older record versions to records (sealed bytes) those
      versions wrote, to prove they still restore;
    * ``blackout_budget_us`` is what ``freeze`` plus ``restore`` may cost per
      device (the median of several updates); over it, the contract fails;
    * ``driver_override`` binds devices to the contract's driver by name, for a
      driver that matches no compatible of its own (``vfio-pci``): every kernel
      the suite boots gets it (:class:`~luo_core.KernelConfig`);
    * ``requires`` names other packs the pack's driver needs in the kernel, as
      ``'module:attr'`` references or module names (``("luo_iommu",)`` for a
      driver that does DMA through an IOMMU domain): every kernel the suite
      boots loads them after the pack, the way a module's dependencies load.
    """

    name: str
    machine: Callable[[], Machine]
    devices: tuple[str, ...] = attrs.field(converter=_devices)
    workload: Callable[[Device], None]
    snapshot: Callable[[Device], Any]
    capabilities: frozenset[str] = attrs.field(default=frozenset(), converter=_capabilities)
    golden: Mapping[int, bytes] = attrs.field(factory=dict)
    blackout_budget_us: float = attrs.field(default=DEFAULT_BLACKOUT_BUDGET_US, validator=_budget)
    driver_override: Mapping[str, str] = attrs.field(factory=dict)
    requires: tuple[str, ...] = attrs.field(default=(), converter=_references)
    origin: PluginOrigin | None = attrs.field(default=None, eq=False)
