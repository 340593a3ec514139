"""Boot parameters: everything a kernel is booted from, and nothing else.

A kernel boots from the hardware's address (through which it maps physical
memory by file descriptor), the machine description, the kernel configuration
and the KHO root's physical address.  Between processes they travel as one
frame (magic ``LUOB``) holding a CBOR map, read back as hostile input.

A :class:`KernelConfig` names its packs as *factories*: ``'module:attr'``
references (the only kind that can cross a process boundary), modules, or
classes and functions that build a plugin.  Every boot calls them afresh, so
no plugin instance, and nothing it holds, outlives the kernel that made it.
"""

from __future__ import annotations

import importlib
import math
import re
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import attrs

from luo_core.abi._cbor import decode_canonical, encode_canonical
from luo_core.abi._frame import FrameKind
from luo_core.abi._machine import Machine
from luo_core.abi._types import is_u64
from luo_core.errors import HandoffError, LiveUpdateError, PluginError

BOOT: Final = FrameKind("boot parameters", b"LUOB", 1, max_body=16 << 20)
MAX_WORKERS: Final = 256
MAX_PLUGINS: Final = 256
_REF: Final = re.compile(r"^[A-Za-z_][\w.]*(:[A-Za-z_][\w.]*)?$")

PluginFactory = str | types.ModuleType | Callable[[], object]


def _check_factory(value: object) -> PluginFactory:
    if isinstance(value, str):
        if len(value) > 200 or not _REF.fullmatch(value):
            raise PluginError(f"plugin reference {value!r} is not 'module' or 'module:attr'")
        return value
    if isinstance(value, types.ModuleType) or callable(value):
        return value
    raise PluginError(
        f"a plugin is given as a factory (a 'module:attr' reference, a module, a class or a "
        f"function), not as an instance of {type(value).__name__}: a kernel builds its packs "
        "afresh on every boot"
    )


def _plugins(value: Iterable[object]) -> tuple[PluginFactory, ...]:
    if isinstance(value, str | types.ModuleType) or callable(value):
        value = (value,)
    items = tuple(value)
    if len(items) > MAX_PLUGINS:
        raise PluginError(f"a kernel loads at most {MAX_PLUGINS} plugins, not {len(items)}")
    return tuple(_check_factory(item) for item in items)


def _workers(value: object) -> int:
    if type(value) is not int or not 1 <= value <= MAX_WORKERS:
        raise LiveUpdateError(
            f"workers must be a whole number from 1 to {MAX_WORKERS}, not {value!r}"
        )
    return value


def _timeout(value: object) -> float | None:
    if value is None:
        return None
    if not (type(value) in (int, float) and isinstance(value, int | float)):
        raise LiveUpdateError(f"callback_timeout must be seconds in (0, 3600], not {value!r}")
    if not (math.isfinite(value) and 0 < value <= 3600):
        raise LiveUpdateError(f"callback_timeout must be seconds in (0, 3600], not {value!r}")
    return float(value)


MAX_OVERRIDES: Final = 4096
_OVERRIDE_TEXT: Final = 255


def _overrides(value: object) -> tuple[tuple[str, str], ...]:
    items = list(value.items()) if isinstance(value, Mapping) else value
    if not isinstance(items, list | tuple) or len(items) > MAX_OVERRIDES:
        raise LiveUpdateError(
            f"driver_override maps at most {MAX_OVERRIDES} device names to driver names"
        )
    pairs: dict[str, str] = {}
    for item in items:
        if not (isinstance(item, list | tuple) and len(item) == 2):
            raise LiveUpdateError("driver_override maps device names to driver names")
        device, driver = item
        for text in (device, driver):
            if not isinstance(text, str) or not 0 < len(text) <= _OVERRIDE_TEXT:
                raise LiveUpdateError(
                    f"driver_override: {text!r:.60} is not a name of 1 to {_OVERRIDE_TEXT} chars"
                )
        pairs[device] = driver
    return tuple(sorted(pairs.items()))


@attrs.frozen
class KernelConfig:
    """What a kernel image is made of: which packs it loads, how it schedules.

    ``plugins`` are plugin factories (see above), registered after the
    installed packs (``discover``).  ``workers > 1`` runs independent device
    subtrees concurrently in every device phase.  ``callback_timeout``
    (seconds) gives up on a callback that does not return in time: it fails
    with :class:`~luo_core.errors.CallbackTimeoutError` (``ETIMEDOUT``) as if it had raised.
    ``driver_override`` binds devices (by name) to drivers (by name) whatever their
    compatible, at every boot: the kernel's ``driver_override`` made persistent, as
    ``vfio-pci.ids=`` on the command line or ``driverctl`` do.
    """

    plugins: tuple[PluginFactory, ...] = attrs.field(default=(), converter=_plugins)
    discover: bool = attrs.field(default=True, converter=bool)
    workers: int = attrs.field(default=1, converter=_workers)
    callback_timeout: float | None = attrs.field(default=None, converter=_timeout)
    driver_override: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_overrides)

    @property
    def portable(self) -> bool:
        """Whether this configuration can boot a kernel in another process."""
        return all(isinstance(p, str) for p in self.plugins)

    def to_wire(self) -> dict[str, Any]:
        """The configuration as data (integers and text only); refused unless every plugin
        is a reference."""
        for plugin in self.plugins:
            if not isinstance(plugin, str):
                raise PluginError(
                    f"plugin {factory_name(plugin)} cannot boot a kernel in another process: "
                    "give it as a 'module:attr' reference"
                )
        timeout = self.callback_timeout
        return {
            "plugins": list(self.plugins),
            "discover": self.discover,
            "workers": self.workers,
            "callback-timeout-us": None if timeout is None else round(timeout * 1_000_000),
            "driver-override": [list(pair) for pair in self.driver_override],
        }

    @classmethod
    def from_wire(cls, wire: object) -> KernelConfig:
        """A configuration read from another process: every field checked."""
        fields = {"plugins", "discover", "workers", "callback-timeout-us", "driver-override"}
        if not isinstance(wire, dict) or set(wire) != fields:
            raise HandoffError("a kernel configuration is a map of " + ", ".join(sorted(fields)))
        plugins, timeout = wire["plugins"], wire["callback-timeout-us"]
        if not (isinstance(plugins, list) and all(isinstance(p, str) for p in plugins)):
            raise HandoffError("a kernel configuration's plugins are 'module:attr' references")
        if type(wire["discover"]) is not bool:
            raise HandoffError("a kernel configuration's discover is true or false")
        if timeout is not None and type(timeout) is not int:
            raise HandoffError("a kernel configuration's callback timeout is whole microseconds")
        overrides = wire["driver-override"]
        if not (
            isinstance(overrides, list)
            and all(type(p) is list and len(p) == 2 for p in overrides)
            and all(type(name) is str for p in overrides for name in p)
            and [tuple(p) for p in overrides] == sorted({tuple(p) for p in overrides})
            and len({p[0] for p in overrides}) == len(overrides)
        ):
            raise HandoffError(
                "a kernel configuration's driver-override is a sorted list of "
                "[device, driver] pairs, one per device"
            )
        try:
            return cls(
                tuple(plugins),
                wire["discover"],
                wire["workers"],
                None if timeout is None else timeout / 1_000_000,
                wire["driver-override"],
            )
        except LiveUpdateError as exc:
            raise HandoffError(f"kernel configuration: {exc}") from None


def load_factory(factory: PluginFactory) -> PluginFactory:
    """A reference's target, imported (a module or a factory); other factories as they are."""
    if not isinstance(factory, str):
        return factory
    module, _, attr = factory.partition(":")
    target: object = importlib.import_module(module)
    for part in filter(None, attr.split(".")):
        target = getattr(target, part)
    if isinstance(target, types.ModuleType) or callable(target):
        return target
    raise PluginError(f"plugin {factory} is neither a module nor a factory")


def resolve(factory: PluginFactory) -> object:
    """A fresh plugin from ``factory``: a module is itself, anything callable is called."""
    target = load_factory(factory)
    if isinstance(target, types.ModuleType):
        return target
    if callable(target):
        return target()
    raise PluginError(f"plugin {factory_name(factory)} is neither a module nor a factory")


def factory_name(factory: object) -> str:
    """How a plugin factory is named in messages and in a ``local:`` distribution."""
    if isinstance(factory, str):
        return factory
    if isinstance(factory, types.ModuleType):
        return factory.__name__
    return getattr(factory, "__qualname__", type(factory).__name__)


@attrs.frozen
class BootParams:
    """Everything a kernel boots from: the hardware, the machine, its image, the handoff."""

    hardware: str
    """The hardware's address: ``unix:NAME`` (its process) or ``local:N`` (this process)."""
    machine: Machine
    config: KernelConfig = attrs.field(factory=KernelConfig)
    kho_root: int | None = None
    """The KHO root's physical address; ``None`` for a cold boot."""

    def to_bytes(self) -> bytes:
        body = {
            "hardware": self.hardware,
            "machine": self.machine.to_wire(),
            "config": self.config.to_wire(),
            "kho-root": self.kho_root,
        }
        return BOOT.pack(encode_canonical(body))

    @classmethod
    def from_bytes(cls, blob: bytes) -> BootParams:
        try:
            wire = decode_canonical(BOOT.unpack(blob))
        except HandoffError as exc:
            raise HandoffError(f"boot parameters: {exc}") from None
        if set(wire) != {
            "hardware",
            "machine",
            "config",
            "kho-root",
        }:
            raise HandoffError("boot parameters are a map of hardware, machine, config, kho-root")
        hardware, root = wire["hardware"], wire["kho-root"]
        if not (isinstance(hardware, str) and hardware.startswith(("unix:", "local:"))):
            raise HandoffError(f"boot parameters: hardware address {hardware!r:.60} is not valid")
        if root is not None and not is_u64(root):
            raise HandoffError(f"boot parameters: KHO root {root!r:.40} is not a u64")
        try:
            machine = Machine.from_wire(wire["machine"])
            config = KernelConfig.from_wire(wire["config"])
        except LiveUpdateError as exc:
            raise HandoffError(f"boot parameters: {exc}") from None
        return cls(hardware, machine, config, root)
