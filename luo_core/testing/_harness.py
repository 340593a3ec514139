"""Booting a pack alone, injecting faults into its callbacks, reading its records.

A *pack* here is what a kernel configuration names: a ``'module:attr'``
reference (what ``luo contract`` uses), a module, or a class or function
that builds the plugin.  The suite never reaches into a pack: it builds the
pack's plugin the way a kernel does, afresh for every boot, and wraps the
callback tables it registers.
"""

from __future__ import annotations

import functools
import threading
import types
from collections.abc import Iterator
from typing import Any

import attrs
import pluggy

from luo_core.abi._boot import KernelConfig, PluginFactory, resolve
from luo_core.kernel._hookspecs import PROJECT, LuoSpec, hookimpl
from luo_core.kernel._kernel import Kernel
from luo_core.kernel._records import DeviceDriver, DeviceDriverOps, Subsystem
from luo_core.kernel.devices import Device
from luo_core.platform import Hardware
from luo_core.platform._models import HardwareSpec
from luo_core.testing._contract import Contract


class InjectedFault(RuntimeError):
    """The failure the suite injects into a pack's callback."""


def _manager(plugin: object) -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(LuoSpec)
    pm.add_hookspecs(HardwareSpec)
    pm.register(plugin)
    return pm


def contracts_of(pack: PluginFactory) -> list[Contract]:
    """Every contract ``pack`` declares (from a plugin built for the purpose)."""
    found: list[Contract] = []
    for result in _manager(resolve(pack)).hook.luo_contracts():
        found.extend(result)
    for contract in found:
        if not isinstance(contract, Contract):
            raise TypeError(f"luo_contracts yielded {contract!r}, expected a Contract")
    return found


def pack_reference(pack: PluginFactory) -> str | None:
    """``pack`` as a ``'module:attr'`` reference a kernel process can import, if it has one."""
    if isinstance(pack, str):
        return pack
    if isinstance(pack, types.ModuleType):
        return pack.__name__
    module, name = getattr(pack, "__module__", None), getattr(pack, "__qualname__", "")
    if module is None or "<" in name or not name:
        return None  # defined inside a function, or a lambda: no process can import it
    return f"{module}:{name}"


class FaultyDriver(DeviceDriverOps):
    """Delegates to the pack's ops, raising in one callback (``fail="freeze"``)
    or hanging in it until ``release`` is set (``fail="hang-freeze"``)."""

    def __init__(
        self, inner: DeviceDriverOps, fail: str, release: threading.Event | None = None
    ) -> None:
        self.inner, self.fail, self.release = inner, fail, release

    def _maybe(self, name: str) -> None:
        if name == self.fail:
            raise InjectedFault(f"fault injected into {name}")
        if f"hang-{name}" == self.fail:
            if self.release is not None:
                self.release.wait(timeout=60)  # the suite releases it once it has looked
            # A hung callback that wakes up does nothing more: the suite's own
            # injected hang must not be mistaken for the pack's thread.
            raise InjectedFault(f"{name} was hung on purpose")

    def probe(self, dev: Device) -> None:
        self.inner.probe(dev)

    def shutdown(self, dev: Device) -> None:
        self.inner.shutdown(dev)

    def can_preserve(self, dev: Device) -> bool:
        return self.inner.can_preserve(dev)

    def prepare(self, dev: Device) -> Any:
        self._maybe("prepare")
        return self.inner.prepare(dev)

    def freeze(self, dev: Device, data: Any) -> Any:
        self._maybe("freeze")
        return self.inner.freeze(dev, data)

    def cancel(self, dev: Device, data: Any) -> None:
        self._maybe("cancel")
        self.inner.cancel(dev, data)

    def restore(self, dev: Device, data: Any) -> None:
        self._maybe("restore")
        self.inner.restore(dev, data)

    def finish(self, dev: Device, data: Any | None) -> None:
        self._maybe("finish")
        self.inner.finish(dev, data)


class Wrapped:
    """A plugin that registers ``pack``'s records, with ``driver``'s ops faulty.

    Built afresh for every boot, like any plugin: it builds the pack's plugin
    afresh too.
    """

    def __init__(
        self, pack: PluginFactory, driver: str, fail: str, release: threading.Event | None = None
    ) -> None:
        self.pm = _manager(resolve(pack))
        self.driver, self.fail, self.release = driver, fail, release

    @hookimpl
    def luo_buses(self, kernel: Kernel | None) -> Iterator[Any]:
        for result in self.pm.hook.luo_buses(kernel=kernel):
            yield from result

    @hookimpl
    def luo_subsystems(self, kernel: Kernel | None) -> Iterator[Subsystem]:
        for result in self.pm.hook.luo_subsystems(kernel=kernel):
            yield from result

    @hookimpl
    def luo_device_drivers(self, kernel: Kernel | None) -> Iterator[DeviceDriver]:
        for result in self.pm.hook.luo_device_drivers(kernel=kernel):
            for record in result:
                if record.name == self.driver:
                    ops = FaultyDriver(record.ops, self.fail, self.release)
                    record = attrs.evolve(record, ops=ops)
                yield record


def power_on(contract: Contract, pack: PluginFactory) -> Hardware:
    """The contract's host, powered on in this process, with the pack's device models."""
    return Hardware(contract.machine(), models=[resolve(pack)])


def boot(
    contract: Contract,
    pack: PluginFactory,
    *,
    fail: str | None = None,
    workers: int = 1,
    release: threading.Event | None = None,
    timeout: float | None = None,
    hardware: Hardware | None = None,
) -> Kernel:
    """A kernel in this process with only ``pack`` loaded (and a fault, maybe), on
    ``hardware`` or a fresh host powered on for it."""
    factory: PluginFactory = pack
    if fail is not None:
        factory = functools.partial(Wrapped, pack, contract.name, fail, release)
    config = KernelConfig(
        [factory, *contract.requires],
        discover=False,
        workers=workers,
        callback_timeout=timeout,
        driver_override=contract.driver_override,
    )
    from luo_core.kexec import boot as cold_boot

    kernel = cold_boot(hardware or power_on(contract, pack), config)
    if fail is not None and not any(
        d.name == contract.name for d in kernel.registry.drivers.values()
    ):
        raise AssertionError(
            f"{contract.name}: the pack has no driver named like its contract; the suite "
            "injects faults into the driver whose name is the contract's name"
        )
    for name in contract.devices:
        kernel.devices.request(name)
    return kernel


def record_of(kernel: Kernel, device: str) -> bytes:
    """The sealed record ``device`` has in the handoff being built (after prepare)."""
    node = kernel.kho.nodes[f"device:{device}"]
    return kernel.memory.read(node.phys, node.length)
