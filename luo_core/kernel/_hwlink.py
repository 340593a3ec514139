"""The kernel's side of the hardware: a channel, its own mappings, and the fence.

A kernel connects to the hardware's address, maps physical memory and the MMIO
pages from the descriptors the hardware sends (its own mappings, not anyone
else's), and attaches, getting a *generation*.  Every register access goes
through its :class:`Fence`: once the kernel is gone (its mappings closed) or
another kernel has attached, an access raises
:class:`~luo_core.errors.KernelGoneError` and never reaches the hardware.  So a
callback thread that outlives its kernel can never touch a device again.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, ClassVar, Final

import attrs

from luo_core._logging import get_logger
from luo_core.errors import HardwareError, KernelGoneError
from luo_core.platform._hardware import GENERATION, close_fds, mmio_base
from luo_core.platform._link import Channel, connect
from luo_core.platform._memory import PhysicalMemory
from luo_core.platform._registers import (
    BAR_OFFSET,
    CONFIG_REGISTERS,
    MMIO_PAGE,
    RegisterMap,
    Registers,
)

log = get_logger("luo")
_BARE: Final = RegisterMap()


@attrs.frozen
class Window:
    """Where one device's registers are, what they are, and how to ring it."""

    name: str
    mmio: int
    registers: RegisterMap
    doorbell: int | None


class Fence:
    """Lets a register access through only while its kernel is the attached one."""

    fenced: ClassVar[collections.deque[tuple[int, str]]] = collections.deque(maxlen=1024)
    """The last accesses refused in this process: ``(generation, thread name)``."""

    def __init__(self, mmio: PhysicalMemory) -> None:
        self._mmio = mmio
        self._buffer: Any = mmio.view(0, MMIO_PAGE)
        self.generation = 0
        self.open = False

    def check(self) -> None:
        if self.open:
            with contextlib.suppress(ValueError):  # released by a concurrent close()
                if GENERATION.unpack_from(self._buffer, 0)[0] == self.generation:
                    return
        name = threading.current_thread().name
        Fence.fenced.append((self.generation, name))
        log.error("fenced_access", generation=self.generation, thread=name)
        raise KernelGoneError(
            f"the kernel of generation {self.generation} is gone: its thread {name!r} "
            "may not touch hardware any more"
        )

    def close(self) -> None:
        self.open = False
        self._buffer.release()


class HardwareLink:
    """One kernel's connection to the hardware, and what it mapped through it."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._channel: Channel = connect(address)
        self._doorbells: list[int] = []
        # Whatever happens to this link, its descriptors do not outlive it.
        self._release = weakref.finalize(self, close_fds, self._doorbells)
        try:
            reply, fds = self._channel.call({"op": "regions"})
            try:
                self.memory, self.mmio = _memory(reply, fds)
            finally:
                close_fds(fds)  # the mappings hold their own copies
            self.windows = self._windows(reply)
        except BaseException:
            self._release()
            self._channel.close()
            raise
        self.fence = Fence(self.mmio)
        self._window_view: Any = self.mmio.view(0, self.mmio.size)  # one for every register file

    def _windows(self, reply: dict[str, Any]) -> dict[str, Window]:
        maps, devices = reply.get("maps"), reply.get("devices")
        if not (isinstance(maps, list) and isinstance(devices, list)):
            raise HardwareError("the hardware described its devices wrongly")
        regmaps = [RegisterMap.from_wire(item) for item in maps]
        windows: dict[str, Window] = {}
        ringing: list[str] = []
        for item in devices:
            if not (isinstance(item, list) and len(item) == 4):
                raise HardwareError(f"malformed device window {item!r:.60}")
            name, base, at, rings = item
            if not (
                isinstance(name, str)
                and type(base) is int
                and type(at) is int
                and type(rings) is bool
            ) or not 0 <= at < len(regmaps):
                raise HardwareError(f"malformed device window {item!r:.60}")
            if base % MMIO_PAGE or not MMIO_PAGE <= base <= self.mmio.size - MMIO_PAGE:
                raise HardwareError(f"device {name}: MMIO page {base:#x} is outside MMIO memory")
            windows[name] = Window(name, base, regmaps[at], None)
            if rings:
                ringing.append(name)
        for name, fd in zip(ringing, self._fetch_doorbells(len(ringing)), strict=True):
            windows[name] = attrs.evolve(windows[name], doorbell=fd)
        return windows

    def _fetch_doorbells(self, count: int) -> list[int]:
        """The doorbell descriptors, a message's worth at a time."""
        while len(self._doorbells) < count:
            reply, fds = self._channel.call({"op": "doorbells", "from": len(self._doorbells)})
            self._doorbells.extend(fds)  # ours from now on, whatever else is wrong
            if reply.get("total") != count or not fds or reply.get("count") != len(fds):
                raise HardwareError(f"the hardware sent doorbells wrongly: {reply!r:.80}")
        if len(self._doorbells) != count:
            raise HardwareError(f"the hardware sent {len(self._doorbells)} doorbells, not {count}")
        return list(self._doorbells)

    def window(self, name: str, index: int) -> Window:
        """Device number ``index``'s window (a device without a model has bare registers)."""
        window = self.windows.get(name)
        base = mmio_base(index)
        if window is None:
            return Window(name, base, _BARE, None)
        if window.mmio != base:
            raise HardwareError(
                f"{name}: the hardware put its MMIO page at {window.mmio:#x}, not {base:#x}"
            )
        return window

    def attach(self) -> int:
        """Become the kernel the hardware answers to; returns the generation."""
        reply, _ = self._channel.call({"op": "attach"})
        generation = reply.get("generation")
        if type(generation) is not int or generation <= 0:
            raise HardwareError(f"the hardware attached us as generation {generation!r}")
        self.fence.generation = generation
        self.fence.open = True
        return generation

    def reset(self, device: str) -> None:
        """Function-level reset of ``device`` (its registers cleared, DMA off)."""
        self._channel.call({"op": "reset", "device": device})

    def registers(self, window: Window) -> Registers:
        """``window``'s BAR 0, fenced, ringing its doorbell on doorbell writes."""
        kick: Callable[[], None] | None = None
        if window.doorbell is not None:
            fd = window.doorbell
            kick = lambda: os.eventfd_write(fd, 1)  # noqa: E731 (an ioeventfd write)
        return Registers(
            self._window_view,
            window.mmio + BAR_OFFSET,
            window.registers,
            side="driver",
            check=self.fence.check,
            kick=kick,
        )

    def config(self, window: Window) -> Registers:
        """``window``'s configuration space, fenced."""
        return Registers(
            self._window_view,
            window.mmio,
            CONFIG_REGISTERS,
            side="driver",
            check=self.fence.check,
        )

    def close(self) -> None:
        """Detach and unmap: from now on every access of this kernel is fenced."""
        self.fence.close()
        with contextlib.suppress(Exception):
            self._channel.call({"op": "detach"})
        self._channel.close()
        self._release()
        self.memory.close()
        self.mmio.close()


def _memory(reply: dict[str, Any], fds: list[int]) -> tuple[PhysicalMemory, PhysicalMemory]:
    ram_size, mmio_size = reply.get("ram-size"), reply.get("mmio-size")
    if not (type(ram_size) is int and type(mmio_size) is int):
        raise HardwareError("the hardware described its memory wrongly")
    if len(fds) != 2:
        raise HardwareError(f"the hardware sent {len(fds)} memory descriptors, not 2")
    memory = PhysicalMemory(ram_size, fd=fds[0])
    try:
        return memory, PhysicalMemory(mmio_size, fd=fds[1])
    except BaseException:
        memory.close()
        raise
