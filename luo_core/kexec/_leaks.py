"""Proof, after an in-process kexec, that nothing of the old kernel reached the new one.

The old kernel hands over weak references to what it and its packs made
(plugins, ops, devices, driver data, preserved values).  Whatever is still
alive is looked for in the new kernel's object graph (no collection is
forced: an object only uncollected garbage keeps alive is not reachable from
the new kernel, and a full collection in a large process costs tens of
milliseconds per kexec): from the kernel itself, through its packs' instances, closures, classes
and module globals (where state smuggled around the handoff would sit), but
not into the rest of the interpreter.  One found is a
:class:`~luo_core.errors.KernelLeakError` naming it and the path to it.
"""

from __future__ import annotations

import gc
import sys
import types
from collections import deque
from collections.abc import Iterable
from typing import Any, Final

from luo_core.errors import KernelLeakError
from luo_core.kernel._jump import Tracked

MAX_OBJECTS: Final = 500_000


def prove_nothing_crossed(tracked: Tracked, new: Any) -> None:
    """Raise :class:`KernelLeakError` if a tracked object is reachable from ``new``."""
    alive: dict[int, str] = {}
    keep: list[object] = []
    for what, ref in tracked:
        obj = ref()
        if obj is not None:
            alive[id(obj)] = what
            keep.append(obj)
    if not alive:
        return
    path = _find(new, alive, pack_prefixes(new))
    if path is not None:
        found, steps = path
        raise KernelLeakError(
            f"{alive[found]} of the old kernel is still reachable from the new one "
            f"({' -> '.join(steps)}): only the handoff may cross a kexec"
        )


def pack_prefixes(kernel: Any) -> tuple[str, ...]:
    """The top-level packages of the new kernel's plugins (luo's own excluded)."""
    names = set()
    for plugin in kernel.registry.pm.get_plugins():
        module = (
            plugin.__name__ if isinstance(plugin, types.ModuleType) else type(plugin).__module__
        )
        top = module.partition(".")[0]
        # A script's or a doctest's own namespace is also its user's: a user who
        # holds the old kernel there is not a pack that smuggles it.
        if top not in ("luo_core", "builtins", "__main__") and top in sys.modules:
            names.add(top)
    return tuple(sorted(names))


def _find(
    root: object, targets: dict[int, str], packs: tuple[str, ...]
) -> tuple[int, list[str]] | None:
    module_dicts = {id(m.__dict__): name for name, m in list(sys.modules.items()) if m is not None}
    parents: dict[int, tuple[int, str]] = {id(root): (0, type(root).__name__)}
    queue: deque[object] = deque([root])
    seen = 0
    while queue and seen < MAX_OBJECTS:
        obj = queue.popleft()
        seen += 1
        for child in _referents(obj, packs, module_dicts):
            key = id(child)
            if key in parents:
                continue
            parents[key] = (id(obj), _label(child, module_dicts))
            if key in targets:
                return key, _path(parents, key)
            queue.append(child)
    return None


def _referents(
    obj: object, packs: tuple[str, ...], module_dicts: dict[int, str]
) -> Iterable[object]:
    if isinstance(obj, types.ModuleType):
        return [obj.__dict__] if obj.__name__.startswith(packs) else []
    if isinstance(obj, type):
        return [obj.__dict__] if obj.__module__.startswith(packs) else []
    if isinstance(obj, types.FunctionType):
        found: list[object] = list(obj.__closure__ or ())
        if obj.__module__ and obj.__module__.startswith(packs):
            found.append(obj.__globals__)
        return found
    if (
        isinstance(obj, dict)
        and id(obj) in module_dicts
        and not module_dicts[id(obj)].startswith(packs)
    ):
        return []
    if isinstance(obj, (types.FrameType, types.CodeType, types.BuiltinFunctionType)):
        return []
    referents: list[object] = gc.get_referents(obj)
    return referents


def _label(obj: object, module_dicts: dict[int, str]) -> str:
    if isinstance(obj, dict) and id(obj) in module_dicts:
        return f"module {module_dicts[id(obj)]}"
    if isinstance(obj, type):
        return f"class {obj.__qualname__}"
    return type(obj).__qualname__


def _path(parents: dict[int, tuple[int, str]], key: int) -> list[str]:
    steps: list[str] = []
    while key:
        parent, label = parents[key]
        steps.append(label)
        key = parent
    return list(reversed(steps))
