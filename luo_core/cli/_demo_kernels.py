"""``luo demo``'s kernels, wherever they run: in a process of their own or in this one.

The run asks the same few things of every kernel (:class:`DemoKernel`); a
kernel process answers over its socket, a kernel of this process directly.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import attrs

from luo_core.abi._stats import UpdateStats
from luo_core.errors import NotFoundError
from luo_core.kexec import KernelProcess

WORKLOADS = ("example-nic", "virtio-net", "nvme")
"""The contracts whose workloads the demo runs on the host's own devices bound to the
driver of the same name: traffic on its NICs, I/O on its storage."""


@attrs.frozen
class DeviceView:
    """A device as a kernel had it."""

    name: str
    driver: str | None
    requested: bool
    preserved: bool
    reclaimed: bool


class DemoKernel(Protocol):
    """What the run asks of a kernel, wherever it runs."""

    @property
    def pid(self) -> int: ...
    @property
    def liveupdate_number(self) -> int: ...
    @property
    def stats(self) -> UpdateStats | None: ...
    def devices(self) -> dict[str, DeviceView]: ...
    def request(self, device: str) -> None: ...
    def workload(self, contract: str, device: str) -> None: ...
    def snapshot(self, contract: str, device: str) -> object: ...
    def manifest(self) -> dict[str, Any]: ...
    def prepare(self, target: Mapping[str, Any] | None) -> None: ...
    def kexec(self, during_blackout: Callable[[], None] | None = None) -> DemoKernel: ...
    def finish(self) -> None: ...
    def packs(self) -> list[dict[str, Any]]: ...
    def write_sysfs(self, path: Path) -> None: ...
    def handoff(self) -> bytes: ...
    def command(self, name: str, args: Mapping[str, Any] | None = None) -> Any: ...
    def shutdown(self) -> None: ...


class _Remote:
    """A kernel in a process of its own."""

    def __init__(self, kernel: KernelProcess, next_python: str | None) -> None:
        self.kernel = kernel
        self.next_python = next_python

    @property
    def pid(self) -> int:
        return self.kernel.pid

    @property
    def liveupdate_number(self) -> int:
        return self.kernel.liveupdate_number

    @property
    def stats(self) -> UpdateStats | None:
        return self.kernel.stats

    def devices(self) -> dict[str, DeviceView]:
        return {
            d.name: DeviceView(d.name, d.driver, d.requested, d.preserved, d.reclaimed)
            for d in self.kernel.devices().values()
        }

    def request(self, device: str) -> None:
        self.kernel.request(device)

    def workload(self, contract: str, device: str) -> None:
        self.kernel.workload(contract, device)

    def snapshot(self, contract: str, device: str) -> object:
        return self.kernel.snapshot(contract, device)

    def manifest(self) -> dict[str, Any]:
        return self.kernel.manifest()

    def prepare(self, target: Mapping[str, Any] | None) -> None:
        self.kernel.prepare(target=target, next_python=self.next_python)

    def kexec(self, during_blackout: Callable[[], None] | None = None) -> _Remote:
        return _Remote(self.kernel.kexec(during_blackout=during_blackout), self.next_python)

    def finish(self) -> None:
        self.kernel.finish()

    def packs(self) -> list[dict[str, Any]]:
        return [_pack(text) for text in self.kernel.packs()]

    def write_sysfs(self, path: Path) -> None:
        self.kernel.write_sysfs(path)

    def handoff(self) -> bytes:
        return self.kernel.handoff()

    def command(self, name: str, args: Mapping[str, Any] | None = None) -> Any:
        return self.kernel.command(name, args)

    def shutdown(self) -> None:
        self.kernel.shutdown()


class _Local:
    """A kernel in this process."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel

    @property
    def pid(self) -> int:
        return os.getpid()

    @property
    def liveupdate_number(self) -> int:
        return int(self.kernel.liveupdate_number)

    @property
    def stats(self) -> UpdateStats | None:
        stats: UpdateStats | None = self.kernel.stats
        return stats

    def devices(self) -> dict[str, DeviceView]:
        return {
            d.name: DeviceView(
                d.name, d.driver.name if d.driver else None, d.requested, d.preserved, d.reclaimed
            )
            for d in self.kernel.devices.devices()
        }

    def request(self, device: str) -> None:
        self.kernel.devices.request(device)

    def _contract(self, name: str) -> Any:
        for result in self.kernel.registry.pm.hook.luo_contracts():
            for contract in result or ():
                if contract.name == name:
                    return contract
        raise NotFoundError(f"no contract {name!r} in this kernel's packs")

    def workload(self, contract: str, device: str) -> None:
        self._contract(contract).workload(self.kernel.devices[device])

    def snapshot(self, contract: str, device: str) -> object:
        return self._contract(contract).snapshot(self.kernel.devices[device])

    def manifest(self) -> dict[str, Any]:
        manifest: dict[str, Any] = self.kernel.manifest()
        return manifest

    def prepare(self, target: Mapping[str, Any] | None) -> None:
        self.kernel.prepare(target=target)

    def kexec(self, during_blackout: Callable[[], None] | None = None) -> _Local:
        return _Local(self.kernel.kexec(during_blackout=during_blackout))

    def finish(self) -> None:
        self.kernel.finish()

    def packs(self) -> list[dict[str, Any]]:
        return [
            {"name": p.origin.distribution, "version": p.origin.version, "status": p.status}
            for p in self.kernel.registry.packs
        ]

    def write_sysfs(self, path: Path) -> None:
        from luo_core.kernel._sysfs import write_sysfs

        write_sysfs(self.kernel, path)

    def handoff(self) -> bytes:
        from luo_core.abi import save_image

        if self.kernel.kho_root is None:
            raise NotFoundError("this kernel was cold-booted: it has no handoff")
        return save_image(self.kernel.memory, self.kernel.kho_root)

    def command(self, name: str, args: Mapping[str, Any] | None = None) -> Any:
        return self.kernel.command(name, args)

    def shutdown(self) -> None:
        # The VMs' vCPUs are threads of this process: stop them before the hardware goes.
        with contextlib.suppress(Exception):
            self.kernel.power_off()


def _pack(text: str) -> dict[str, Any]:
    """A kernel process's ``distribution version status`` line, as an object."""
    parts = text.split(" ")
    if len(parts) != 3:
        return {"name": text, "version": None, "status": None}
    name, version, status = parts
    return {"name": name, "version": version, "status": status}
