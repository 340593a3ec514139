"""Device ordering with graphlib: who takes part, who must run before whom, cycles.

The devices of an update are listed as the RFC's ``dev_liveupdate`` lists
them: each requested device and its ancestors, sorted by depth, deepest
first, and otherwise in the order they were found.  Freeze runs children and
consumers before their parent or supplier; restore runs parents and suppliers
first.  A graph maps each device to the devices that must finish before it.
"""

from __future__ import annotations

import graphlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from luo_core.errors import DependencyCycleError

if TYPE_CHECKING:
    from luo_core.kernel.devices._tree import Device

Graph = dict["Device", set["Device"]]


def depth(dev: Device) -> int:
    """How many devices from ``dev`` up to the root, ``dev`` included
    (``dev_liveupdate_get_depth()``)."""
    count = 0
    node: Device | None = dev
    while node is not None:
        count += 1
        node = node.parent
    return count


def preserve_list(requested: Iterable[Device]) -> list[Device]:
    """The devices an update runs, in the order the RFC runs them.

    As ``dev_liveupdate_build_preserve_list()``: the requested devices in
    enumeration order, each followed by its ancestors up to the first one
    already listed (``__find_ancestors_and_depth()``); then a stable sort by
    depth, deepest first (``list_sort()`` with ``dev_depth_cmp()``).  Devices
    at one depth keep the order they were listed in.  luo also lists each
    listed device's suppliers (device links), and theirs, after it.
    """
    listed: dict[Device, None] = {}
    for dev in sorted(requested, key=lambda d: d.index):
        pending = [dev]
        while pending:
            node: Device | None = pending.pop(0)
            while node is not None and node not in listed:
                listed[node] = None
                pending.extend(node.suppliers)
                node = node.parent
    return sorted(listed, key=lambda d: -depth(d))


def restore_graph(devices: Iterable[Device]) -> Graph:
    """Parents and suppliers (within ``devices``) before each device."""
    chosen = set(devices)
    graph: Graph = {}
    for dev in _tree_order(chosen):
        before = {s for s in dev.suppliers if s in chosen}
        if dev.parent is not None and dev.parent in chosen:
            before.add(dev.parent)
        graph[dev] = before
    return graph


def freeze_graph(devices: Iterable[Device]) -> Graph:
    """Children and consumers (within ``devices``) before each device."""
    graph: Graph = {}
    for dev, before in restore_graph(devices).items():
        graph.setdefault(dev, set())
        for first in before:
            graph.setdefault(first, set()).add(dev)
    return graph


def static_order(graph: Graph) -> list[Device]:
    """A deterministic serial order, or :class:`DependencyCycleError`."""
    try:
        return list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        raise DependencyCycleError([dev.name for dev in exc.args[1]]) from None


def _tree_order(chosen: set[Device]) -> list[Device]:
    return sorted(chosen, key=lambda d: d.index)
