"""The hardware, powered on: memory, MMIO register pages, device models and their loops.

:class:`Hardware` is the actor that outlives every kernel.  It owns the
machine's physical memory and MMIO memory (two memfds), one model per device
that has one, and the generation of the kernel currently attached.  Kernels
never hold it: they reach it only through messages (:meth:`Hardware.handle`,
the vfio-user-like protocol of :mod:`luo_core.platform._server`) and through
the memory it shares by file descriptor.

MMIO page 0 is the platform's own: its first u64 is the generation of the
attached kernel (0 when none is).  Every register access a kernel makes checks
it, so a thread left behind by a kernel that is gone cannot touch hardware.
"""

from __future__ import annotations

import errno
import itertools
import os
import resource
import struct
import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from luo_core._logging import get_logger
from luo_core.abi._machine import Machine
from luo_core.abi._wire import close_fds as close_fds
from luo_core.abi._wire import plain
from luo_core.errors import HardwareError, LiveUpdateError
from luo_core.platform._iommu import Iommu
from luo_core.platform._irq import InterruptRemapper, no_cpu
from luo_core.platform._memory import PhysicalMemory
from luo_core.platform._models import DeviceContext, DeviceModel, ModelRunner, discover_models
from luo_core.platform._posted import Poster
from luo_core.platform._registers import (
    BAR_OFFSET,
    CONFIG_REGISTERS,
    CONFIG_SIZE,
    MMIO_PAGE,
    RegisterMap,
    Registers,
)

log = get_logger("luo.hw")
GENERATION: Final = struct.Struct("<Q")
PROTOCOL_VERSION: Final = 1
DOORBELLS_PER_MESSAGE: Final = 48
"""Fewer than a message's descriptor limit (:data:`luo_core.abi._wire.MAX_FDS`)."""
_LOCAL: weakref.WeakValueDictionary[str, Hardware] = weakref.WeakValueDictionary()
_ids = itertools.count(1)


def mmio_base(index: int) -> int:
    """Where device number ``index`` (enumeration order) has its MMIO page."""
    return (1 + index) * MMIO_PAGE


class Connection:
    """One peer's session: which kernel generation it attached as, if any."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.generation = 0


class Hardware:
    """A machine's hardware, running.  ``close()`` powers it off.

    ``models`` adds model plugins to those discovered from installed packs
    (``discover``).  In this process the hardware is reached as
    :attr:`address` (``local:N``); :mod:`luo_core.platform._server` serves it
    to other processes over a UNIX socket.
    """

    def __init__(
        self, machine: Machine, *, models: Iterable[object] = (), discover: bool = True
    ) -> None:
        machine.check()
        self.machine = machine
        self.ram = PhysicalMemory(machine.memory_size, name="luo-ram")
        self.iommu = Iommu(self.ram)
        # No CPU is modelled: a notification is counted by the poster and goes no further.
        self.interrupts = InterruptRemapper(self.ram, Poster(self.ram, no_cpu))
        names = list(machine.devices)
        self.mmio = PhysicalMemory(mmio_base(len(names)), name="luo-mmio")
        self._index = {name: at for at, name in enumerate(names)}
        self._lock = threading.RLock()
        self._generation = 0
        self._closed = False
        self._maps: dict[str, RegisterMap] = {}
        self._runners: dict[str, ModelRunner] = {}
        known = discover_models(models, discover=discover)
        _check_descriptors(sum(1 for d in machine.devices.values() if d.compatible in known))
        for name, spec in machine.devices.items():
            model_type = known.get(spec.compatible)
            self._maps[name] = model_type.registers if model_type else RegisterMap()
            if model_type is None:
                continue
            try:
                context = DeviceContext(
                    name,
                    spec.params,
                    self.registers(name),
                    self.config(name),
                    self.ram,
                    self.iommu,
                    self.interrupts,
                )
                model = model_type(context)
                model.reset()
            except Exception as exc:
                log.error("device_model_failed", device=name, error=f"{type(exc).__name__}: {exc}")
                self._maps[name] = RegisterMap()
                continue
            self._runners[name] = ModelRunner(name, model)
        self.address = f"local:{next(_ids)}"
        """Where kernels in this process find this hardware."""
        _LOCAL[self.address.removeprefix("local:")] = self
        self._finalizer = weakref.finalize(self, _power_off, list(self._runners.values()), False)

    # -- what the operator does (tests, the demo) ---------------------------------

    @property
    def generation(self) -> int:
        """The attached kernel's generation (0: no kernel attached)."""
        return self._read_generation()

    def model(self, device: str) -> DeviceModel | None:
        """The model behind ``device`` (for inspection in this process only)."""
        runner = self._runners.get(device)
        return runner.model if runner else None

    def control(self, device: str, op: str, args: Mapping[str, Any] | None = None) -> object:
        """Ask ``device``'s model to do ``op`` (inject traffic, report counters...).

        Whatever goes wrong in the model is a :class:`HardwareError` naming it,
        and its answer is plain data (:func:`luo_core.abi._wire.plain`).
        """
        runner = self._runner(device)
        model = runner.model
        try:
            return plain(runner.call(lambda: model.control(op, dict(args or {}))))
        except LiveUpdateError:
            raise
        except Exception as exc:
            raise HardwareError(
                f"{device}: control {op!r} failed: {type(exc).__name__}: {exc}"
            ) from None

    def sync(self) -> None:
        """Return once every working model has done what was asked of it before this call."""
        for runner in list(self._runners.values()):
            if runner.crashed is None:
                runner.call(lambda: None)

    def stats(self) -> dict[str, int]:
        """The remapping hardware's counters since power-on: DMA faults (the IOMMU's),
        interrupt-remapping faults, and what the posting unit posted, notified and
        suppressed."""
        poster = self.interrupts.poster
        return {
            "dma-faults": self.iommu.faults,
            "interrupt-faults": self.interrupts.faults,
            "posted": poster.posted,
            "notified": poster.notified,
            "suppressed": poster.suppressed,
        }

    def reset(self, device: str) -> None:
        """A function-level reset: configuration and registers cleared, the model reset."""
        base = mmio_base(self._device(device))
        runner = self._runners.get(device)

        def flr() -> None:
            self.mmio.fill(base, MMIO_PAGE)
            if runner is not None:
                runner.model.reset()

        if runner is None:
            flr()
        else:
            runner.call(flr)

    def registers(self, device: str) -> Registers:
        """``device``'s BAR 0 as the hardware sees it."""
        base = mmio_base(self._device(device))
        return Registers(
            self.mmio.view(0, self.mmio.size), base + BAR_OFFSET, self._maps[device], side="device"
        )

    def config(self, device: str) -> Registers:
        """``device``'s configuration space as the hardware sees it."""
        base = mmio_base(self._device(device))
        return Registers(self.mmio.view(0, self.mmio.size), base, CONFIG_REGISTERS, side="device")

    def close(self) -> None:
        """Power off: stop every model, unmap memory.  Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        _power_off(list(self._runners.values()), True)
        _LOCAL.pop(self.address.removeprefix("local:"), None)
        self.ram.close()
        self.mmio.close()

    def __enter__(self) -> Hardware:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the protocol ------------------------------------------------------------

    def handle(
        self, request: Mapping[str, Any], conn: Connection
    ) -> tuple[dict[str, Any], list[int]]:
        """Answer one message; the descriptors returned are the caller's to send and close."""
        try:
            op = request.get("op")
            if op == "version":
                return {"version": PROTOCOL_VERSION}, []
            if op == "regions":
                return self._regions()
            if op == "doorbells":
                return self._doorbell_batch(request.get("from"))
            if op == "attach":
                return {"generation": self._attach(conn)}, []
            if op == "detach":
                self._detach(conn)
                return {}, []
            if op == "reset":
                self._require_attached(conn)
                self.reset(_text(request, "device"))
                return {}, []
            if op == "operator-reset":
                self._require_operator(conn)
                self.reset(_text(request, "device"))
                return {}, []
            if op == "control":
                self._require_operator(conn)
                args = request.get("args", {})
                if not isinstance(args, dict):
                    raise HardwareError("control args must be a map")
                result = self.control(_text(request, "device"), _text(request, "name"), args)
                return {"result": result}, []
            if op == "sync":
                self._require_operator(conn)
                self.sync()
                return {}, []
            if op == "stats":
                self._require_operator(conn)
                return {"stats": self.stats()}, []
            raise HardwareError(f"unknown request {op!r}", errno=errno.EOPNOTSUPP)
        except LiveUpdateError as exc:
            return {"error": {"errno": exc.errno, "message": str(exc)}}, []
        except Exception as exc:  # a bug of the hardware's own must not take it down
            message = f"{type(exc).__name__}: {exc}"
            log.error("hardware_request_failed", request=request.get("op"), error=message)
            return {"error": {"errno": errno.EIO, "message": message}}, []

    def _regions(self) -> tuple[dict[str, Any], list[int]]:
        """Memory by descriptor, and the devices that have registers (those with a model).

        A device's MMIO page follows from its place in the machine description
        (:func:`mmio_base`), so a device without a model needs no entry; each
        distinct register map is sent once.  Doorbells come by ``doorbells``.
        """
        maps: dict[RegisterMap, int] = {}
        devices = []
        for name in self._runners:
            regmap = self._maps[name]
            at = maps.setdefault(regmap, len(maps))
            devices.append([name, mmio_base(self._index[name]), at, bool(self._doorbells(name))])
        reply = {
            "ram-size": self.ram.size,
            "mmio-size": self.mmio.size,
            "config-size": CONFIG_SIZE,
            "maps": [regmap.to_wire() for regmap in maps],
            "devices": devices,
        }
        return reply, _dup([self.ram.fd, self.mmio.fd])

    def _doorbells(self, name: str) -> list[int]:
        runner = self._runners.get(name)
        if runner is None or not any(r.doorbell for r in self._maps[name]):
            return []
        return [runner.doorbell]

    def _doorbell_batch(self, start: object) -> tuple[dict[str, Any], list[int]]:
        """Doorbell descriptors from the ``start``-th on, as many as one message carries."""
        rings = [fd for name in self._runners for fd in self._doorbells(name)]
        if type(start) is not int or not 0 <= start <= len(rings):
            raise HardwareError(f"no doorbell number {start!r} (there are {len(rings)})")
        batch = rings[start : start + DOORBELLS_PER_MESSAGE]
        return {"from": start, "count": len(batch), "total": len(rings)}, _dup(batch)

    def _attach(self, conn: Connection) -> int:
        with self._lock:
            self._generation += 1
            conn.generation = self._generation
            self.mmio.write(0, GENERATION.pack(self._generation))
            log.debug("kernel_attached", generation=self._generation)
            return self._generation

    def _detach(self, conn: Connection) -> None:
        with self._lock:
            if conn.generation and conn.generation == self._generation:
                self.mmio.write(0, GENERATION.pack(0))
            conn.generation = 0

    def _require_attached(self, conn: Connection) -> None:
        if not conn.generation or conn.generation != self._read_generation():
            raise HardwareError(
                f"the kernel of generation {conn.generation} is not the one attached",
                errno=errno.ESTALE,
            )

    def _require_operator(self, conn: Connection) -> None:
        if conn.role != "operator":
            raise HardwareError("only the machine's operator may do that", errno=errno.EPERM)

    def _read_generation(self) -> int:
        value: int = GENERATION.unpack(self.mmio.read(0, GENERATION.size))[0]
        return value

    def _device(self, device: str) -> int:
        try:
            return self._index[device]
        except KeyError:
            raise HardwareError(
                f"no device {device!r} on this machine", errno=errno.ENODEV
            ) from None

    def _runner(self, device: str) -> ModelRunner:
        self._device(device)
        runner = self._runners.get(device)
        if runner is None:
            raise HardwareError(f"{device} has no device model", errno=errno.ENODEV)
        return runner


def local_hardware(address: str) -> Hardware:
    """The hardware at ``local:N`` in this process."""
    hw = _LOCAL.get(address.removeprefix("local:"))
    if hw is None:
        raise HardwareError(f"no hardware at {address} in this process", errno=errno.ENODEV)
    return hw


DESCRIPTORS_PER_MODEL: Final = 3
"""A model's doorbell and wake-up eventfds, and a kernel's copy of the doorbell."""


def _check_descriptors(models: int) -> None:
    """Refuse a machine whose models would exhaust this process's descriptors."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = models * DESCRIPTORS_PER_MODEL + 256
    if soft != resource.RLIM_INFINITY and needed > soft:
        raise HardwareError(
            f"{models} devices with a model need about {needed} file descriptors and this "
            f"process may open {soft} (raise it with ulimit -n, or model fewer devices)",
            errno=errno.EMFILE,
        )


def _dup(fds: Sequence[int]) -> list[int]:
    """Copies of ``fds`` for a peer (all or none: a failure closes those made)."""
    copies: list[int] = []
    try:
        for fd in fds:
            copies.append(os.dup(fd))
    except OSError:
        close_fds(copies)
        raise HardwareError("the hardware ran out of descriptors", errno=errno.EMFILE) from None
    return copies


def _power_off(runners: Sequence[ModelRunner], wait: bool) -> None:
    for runner in runners:
        runner.stop(wait=wait)


def _text(request: Mapping[str, Any], key: str) -> str:
    value = request.get(key)
    if not isinstance(value, str):
        raise HardwareError(f"request field {key!r} must be text")
    return value
