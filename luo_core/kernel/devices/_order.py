"""Device ordering with graphlib: who must run before whom, and cycle detection.

Freeze runs children and consumers before their parent or supplier (deepest
first); restore runs parents and suppliers first.  A graph maps each device to
the devices that must finish before it.
"""

from __future__ import annotations

import graphlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from luo_core.errors import DependencyCycleError

if TYPE_CHECKING:
    from luo_core.kernel.devices._tree import Device

Graph = dict["Device", set["Device"]]


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
