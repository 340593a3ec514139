"""Device models: the hardware side of a device, each running its own loop.

A pack ships a model next to its driver: a :class:`DeviceModel` subclass
naming the ``compatible`` strings it implements and its :class:`RegisterMap`.
The hardware gives every device with a model a thread of its own
(:class:`ModelRunner`) that keeps it working whether or not any kernel
exists: it ticks every ``period`` seconds, reacts to doorbell writes
(``kick``), and runs the requests it is sent (reset, controls) one at a time,
so a model never needs a lock.  Models are discovered through the
``luo_core.plugins`` entry points, by the ``luo_device_models`` hook.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import re
import select
import threading
import time
import types
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from importlib import metadata
from typing import Any, ClassVar, TypeVar

import pluggy

from luo_core._logging import get_logger
from luo_core.abi._boot import resolve
from luo_core.abi._dmar import requester_id
from luo_core.errors import HardwareError
from luo_core.platform._iommu import DeviceDma, Iommu, Requester
from luo_core.platform._irq import DeviceMsi, InterruptRemapper, no_cpu
from luo_core.platform._memory import PhysicalMemory
from luo_core.platform._posted import Poster
from luo_core.platform._registers import RegisterMap, Registers

log = get_logger("luo.hw")
T = TypeVar("T")

ENTRY_POINT_GROUP = "luo_core.plugins"
DISABLE_ENV = "LUO_DISABLE_PLUGINS"


def normalize(name: str) -> str:
    """PEP 503 normalisation, so ``Luo_Example`` and ``luo-example`` match."""
    return re.sub(r"[-_.]+", "-", name).lower()


def disabled_names() -> list[str]:
    """The names in ``LUO_DISABLE_PLUGINS``, as the user wrote them (stripped)."""
    raw = os.environ.get(DISABLE_ENV, "")
    return [n.strip() for n in raw.split(",") if n.strip()]


def disabled_distributions() -> frozenset[str]:
    """The distributions ``LUO_DISABLE_PLUGINS`` keeps out: of kernels and of the hardware."""
    return frozenset(normalize(n) for n in disabled_names())


PROJECT = "luo"
hookspec = pluggy.HookspecMarker(PROJECT)
CALL_TIMEOUT = 30.0
"""How long a request waits for a model's loop before the device counts as hung (s)."""


class DeviceContext:
    """What a model reaches: its registers, its configuration space, physical memory, DMA, MSIs."""

    def __init__(
        self,
        name: str,
        params: Mapping[str, int],
        regs: Registers,
        config: Registers,
        ram: PhysicalMemory,
        iommu: Iommu | None = None,
        interrupts: InterruptRemapper | None = None,
    ) -> None:
        self.name = name
        self.params = dict(params)
        self.regs = regs
        """The device's BAR 0 registers, as the device sees them (it may write all)."""
        self.config = config
        """Its configuration space (``command`` holds the bus-master bit)."""
        self.ram = ram
        """The machine's physical memory, reached directly (no translation)."""
        self.iommu = Iommu(ram) if iommu is None else iommu
        """The machine's IOMMU: its fault count and log."""
        self.interrupts = (
            InterruptRemapper(ram, Poster(ram, no_cpu)) if interrupts is None else interrupts
        )
        """The machine's interrupt remapping: its poster, fault count and log."""

    def dma(self, root: int | None = None) -> DeviceDma:
        """DMA as this device: through its context entry in the IOMMU's root table, as a
        PCI function's DMA goes; or (``root``) through the page tables at ``root``."""
        where = Requester(requester_id(self.name)) if root is None else root
        return DeviceDma(self.iommu, where, self.name)

    def msi(self, table: int | None = None, entries: int = 0) -> DeviceMsi:
        """MSIs as this device: through the remapping table the hardware has enabled;
        or (``table``) through the ``entries``-entry table at ``table``."""
        return DeviceMsi(self.interrupts, table, entries, self.name)


class DeviceModel:
    """The hardware of one device.  Subclass it, name ``compatible`` and ``registers``.

    * ``reset()`` runs at power-on and at every function-level reset, after
      the register window was zeroed: set the registers' reset values.
    * ``kick()`` runs after the driver wrote a doorbell register.
    * ``tick(now_ns)`` runs every ``period`` seconds (``None``: never).
    * ``control(op, args)`` answers the machine's operator (tests, the demo):
      inject traffic, read internal counters.  Return plain data.

    All of them run on the model's own thread, one at a time.
    """

    compatible: ClassVar[tuple[str, ...]] = ()
    registers: ClassVar[RegisterMap] = RegisterMap()

    def __init__(self, ctx: DeviceContext) -> None:
        self.ctx = ctx
        self.period: float | None = None

    def reset(self) -> None:
        return None

    def kick(self) -> None:
        return None

    def tick(self, now_ns: int) -> None:
        return None

    def control(self, op: str, args: Mapping[str, Any]) -> object:
        raise HardwareError(f"{self.ctx.name}: the model has no control {op!r}")


class HardwareSpec:
    """Hook specifications the hardware calls (project ``luo``)."""

    @hookspec
    def luo_device_models(self) -> Iterable[type[DeviceModel]]:  # type: ignore[empty-body]
        """Register device models: :class:`DeviceModel` subclasses, each naming the
        ``compatible`` strings it implements.  Called once, when the hardware
        powers on, in the hardware's own process.

        Example::

            >>> from luo_core import hookimpl
            >>> from luo_core.platform import DeviceModel, Register, RegisterMap
            >>> class Blinker(DeviceModel):
            ...     compatible = ("acme,blinker",)
            ...     registers = RegisterMap([Register("led", 0x0)])
            >>> class BlinkerPack:
            ...     @hookimpl
            ...     def luo_device_models(self):
            ...         yield Blinker
            >>> from luo_core.platform import discover_models
            >>> discover_models([BlinkerPack()], discover=False)["acme,blinker"] is Blinker
            True
        """


def discover_models(
    plugins: Iterable[object] = (), *, discover: bool = True
) -> dict[str, type[DeviceModel]]:
    """Model classes by compatible: from installed packs and ``plugins``.

    A pack whose import or hook fails is logged (``model_pack_failed``) and
    skipped: its devices run without a model, as dead hardware would.
    """
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(HardwareSpec)
    # The plugins given first: a pack's own models win over installed ones.
    sources: list[tuple[str, Callable[[], object]]] = [
        (f"local:{type(p).__name__}", functools.partial(_same, p)) for p in plugins
    ]
    if discover:
        disabled = disabled_distributions()
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist else ep.name
            if normalize(dist) not in disabled:
                # A pack names a module or a factory: build it as a kernel would.
                sources.append((dist, functools.partial(_build, ep)))
    models: dict[str, type[DeviceModel]] = {}
    seen: set[int] = set()
    for origin, load in sources:
        try:
            plugin = load()
            if not hasattr(plugin, "luo_device_models") or id(plugin) in seen:
                continue
            seen.add(id(plugin))
            pm.register(plugin, name=f"{origin}:{len(models)}:{id(plugin)}")
            found = plugin.luo_device_models()
            for model in found or ():
                if not (isinstance(model, type) and issubclass(model, DeviceModel)):
                    raise HardwareError(f"luo_device_models yielded {model!r}, not a DeviceModel")
                for compatible in model.compatible:
                    models.setdefault(compatible, model)
        except Exception as exc:
            log.error("model_pack_failed", pack=origin, error=f"{type(exc).__name__}: {exc}")
    return models


class ModelRunner:
    """A model's own loop, on its own thread, outliving every kernel."""

    def __init__(self, name: str, model: DeviceModel) -> None:
        self.name = name
        self.model = model
        self.doorbell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        """Written by a kernel after a doorbell register write (an ioeventfd)."""
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._requests: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = (
            queue.SimpleQueue()
        )
        self._stopping = False
        self.crashed: str | None = None
        self._thread = threading.Thread(target=self._loop, name=f"luo-hw {name}", daemon=True)
        self._thread.start()

    def call(self, fn: Callable[[], T], timeout: float = CALL_TIMEOUT) -> T:
        """Run ``fn`` on the model's thread, between its other work, and return its result."""
        if self.crashed is not None:
            raise HardwareError(f"{self.name}: the device model crashed: {self.crashed}")
        if self._stopping:
            raise HardwareError(f"{self.name}: the hardware is powered off")
        done: Future[T] = Future()
        self._requests.put((fn, done))
        os.eventfd_write(self._wake, 1)
        try:
            return done.result(timeout)
        except TimeoutError:
            raise HardwareError(
                f"{self.name}: the device did not answer within {timeout:g}s"
            ) from None

    def stop(self, *, wait: bool = True) -> None:
        """Stop the loop; it closes its eventfds on its way out.

        ``wait=False`` only asks: a garbage-collection finalizer can run while
        the interpreter holds thread locks, so it must never join a thread.
        """
        if not self._stopping:
            self._stopping = True
            with contextlib.suppress(OSError):
                os.eventfd_write(self._wake, 1)
        if wait and self._thread is not threading.current_thread():
            self._thread.join(timeout=CALL_TIMEOUT)

    def _loop(self) -> None:
        poller = select.poll()
        poller.register(self.doorbell, select.POLLIN)
        poller.register(self._wake, select.POLLIN)
        next_tick: int | None = None
        while not self._stopping:
            period = self.model.period
            if period is None:
                next_tick, wait_ms = None, None
            else:
                now = time.monotonic_ns()
                if next_tick is None:
                    next_tick = now + int(period * 1e9)
                wait_ms = max(0, (next_tick - now + 999_999) // 1_000_000)
            ready = {fd for fd, _ in poller.poll(wait_ms)}
            try:
                # Read the doorbell whether or not poll saw it: a kick rung before a
                # request must be handled before that request is answered.
                if _drain(self.doorbell):
                    self.model.kick()
                if self._wake in ready:
                    _drain(self._wake)
                self._serve()
                if next_tick is not None and period is not None:
                    now = time.monotonic_ns()
                    if now >= next_tick:
                        self.model.tick(now)
                        step = int(period * 1e9)
                        # Catch up at most one period: a stalled host is not a burst.
                        next_tick = max(next_tick + step, now)
            except Exception as exc:
                self.crashed = f"{type(exc).__name__}: {exc}"
                log.error("device_model_crashed", device=self.name, error=self.crashed)
                break
        self._fail_pending()
        poller.unregister(self.doorbell)
        poller.unregister(self._wake)
        for fd in (self.doorbell, self._wake):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _serve(self) -> None:
        while True:
            try:
                fn, done = self._requests.get_nowait()
            except queue.Empty:
                return
            # A doorbell rung before this request was queued (while the last kick
            # ran, say) is answered first: "done what was asked before" holds.
            if _drain(self.doorbell):
                self.model.kick()
            try:
                done.set_result(fn())
            except Exception as exc:
                done.set_exception(exc)

    def _fail_pending(self) -> None:
        reason = self.crashed or "the hardware is powered off"
        while True:
            try:
                _, done = self._requests.get_nowait()
            except queue.Empty:
                return
            done.set_exception(HardwareError(f"{self.name}: {reason}"))


def _build(ep: metadata.EntryPoint) -> object:
    """The entry point's plugin, as a kernel builds it, if it ships device models.

    A module or a class says so by its attributes, and a pack with drivers only
    is not built here; a factory function has to be called to say.
    """
    loaded = ep.load()
    if isinstance(loaded, types.ModuleType | type) and not hasattr(loaded, "luo_device_models"):
        return None
    return resolve(loaded)


def _same(obj: object) -> object:
    return obj


def _drain(fd: int) -> bool:
    try:
        return os.eventfd_read(fd) > 0
    except BlockingIOError:
        return False
