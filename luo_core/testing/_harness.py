"""Booting a pack alone, injecting faults into its callbacks, reading its records.

The suite never reaches into a pack: it loads the pack's plugin object the
way the registry does, and wraps the callback tables it registers.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import attrs
import pluggy

from luo_core.kernel._hookspecs import PROJECT, LuoSpec, hookimpl
from luo_core.kernel._kernel import Kernel, KernelConfig
from luo_core.kernel._records import DeviceDriver, DeviceDriverOps, Subsystem
from luo_core.kernel.devices import Device
from luo_core.testing._contract import Contract


class InjectedFault(RuntimeError):
    """The failure the suite injects into a pack's callback."""


def contracts_of(pack: object) -> list[Contract]:
    """Every contract ``pack`` declares, stamped with nothing (no registry)."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(LuoSpec)
    pm.register(pack)
    found: list[Contract] = []
    for result in pm.hook.luo_contracts():
        found.extend(result)
    for contract in found:
        if not isinstance(contract, Contract):
            raise TypeError(f"luo_contracts yielded {contract!r}, expected a Contract")
    return found


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
            assert self.release is not None
            self.release.wait(timeout=60)  # the suite releases it once it has looked

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
    """A plugin that registers ``pack``'s records, with ``driver``'s ops faulty."""

    def __init__(
        self, pack: object, driver: str, fail: str, release: threading.Event | None = None
    ) -> None:
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(LuoSpec)
        self.pm.register(pack)
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


def boot(
    contract: Contract,
    pack: object,
    *,
    fail: str | None = None,
    workers: int = 1,
    release: threading.Event | None = None,
    timeout: float | None = None,
) -> Kernel:
    """A kernel on a fresh host with only ``pack`` loaded (and a fault, maybe)."""
    plugin = pack if fail is None else Wrapped(pack, contract.name, fail, release)
    config = KernelConfig([plugin], discover=False, workers=workers, callback_timeout=timeout)
    kernel = Kernel(contract.machine(), config)
    for name in contract.devices:
        kernel.devices.request(name)
    return kernel


def record_of(kernel: Kernel, device: str) -> bytes:
    """The sealed record ``device`` has in the handoff being built (after prepare)."""
    node = kernel.kho.nodes[f"device:{device}"]
    return kernel.memory.read(node.phys, node.length)
