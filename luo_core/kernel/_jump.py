"""The old kernel's side of kexec: the last phase, then death.

``_jump`` freezes if need be, shuts down and resets every device that is not
preserved, reports the threads left running (a timed-out callback's, or one a
callback started), adds luo's meta node and finalizes KHO: what it returns,
the root's physical address, is all the next kernel will get from it.
``_die`` then lets go of everything: the hardware link is closed (so any
thread still running is fenced), and every object the kernel or its packs made
becomes unreachable from it.  It returns weak references to those objects, so
that an in-process kexec can prove none of them reached the next kernel.
"""

from __future__ import annotations

import threading
import types
import weakref
from collections.abc import Iterable
from typing import Any

from luo_core.abi._meta import META_COMPATIBLE, write_meta
from luo_core.errors import KernelGoneError, LiveUpdateError
from luo_core.kernel._base import log
from luo_core.kernel._handover import publish
from luo_core.kernel._orchestrator import PhaseRunner
from luo_core.kernel._participants import DEVICE, device_key, label
from luo_core.kernel._phases import Phases
from luo_core.kernel._state import State
from luo_core.kernel.devices import Device

META_KEY = ("luo", "meta")
Tracked = list[tuple[str, "weakref.ref[Any]"]]
_KEPT = frozenset(
    {"params", "machine", "config", "kho_root", "generation", "liveupdate_number", "_gone", "_sm"}
)


class Jump(Phases):
    """kexec, seen from the kernel that leaves."""

    def _jump(self) -> int:
        """Finalize the handoff and return the KHO root's physical address.

        As ``liveupdate_reboot()``: the outgoing sessions' files freeze
        first; if one fails the kexec is refused and everything runs on.
        Then, for a prepared update, the participants freeze.  Without one
        this is a plain kexec: every device is shut down and reset, and the
        next kernel boots cold but for the sessions.
        """
        self._alive()
        try:
            if self.state is State.PREPARED:  # the sessions freeze first, inside the blackout
                self.freeze(first=self.luo.freeze)
            else:
                self.luo.freeze()
        except BaseException:
            self.luo.unfreeze()
            raise
        with self._sm.hold("kexec"):
            live = self.state is State.FROZEN
            stats = self._update_stats() if live else None
            runner = self._start("kexec")
            kept = {name for kind, name in self._prepared if kind == DEVICE} if live else set()
            for dev in reversed(self.devices.devices()):
                if dev.name not in kept:
                    if dev.driver is not None:
                        runner.call_quietly(label(device_key(dev)), dev.driver.ops.shutdown, dev)
                    self._reset(dev)
            self.luo.publish(self.liveupdate_number + 1)
            if stats is not None:
                stats.threads_left = self._threads_left()
                stats.phases["kexec"] = runner.stats  # the next kernel closes it
                publish(self.kho, META_KEY, META_COMPATIBLE, write_meta(stats))
            return self.kho.finalize(self.liveupdate_number + 1).phys

    def power_off(self) -> None:
        """``kernel_power_off``'s ``device_shutdown``: every bound driver's ``shutdown``,
        children first, so that nothing a driver started (a VM's vCPU threads, say) runs
        on once this kernel is gone.  A failure is logged and the rest go on."""
        runner = PhaseRunner("shutdown")
        for dev in reversed(self.devices.devices()):
            if dev.driver is not None:
                runner.call_quietly(label(device_key(dev)), dev.driver.ops.shutdown, dev)

    def _reset(self, dev: Device) -> None:
        try:
            self._link.reset(dev.name)
        except LiveUpdateError as exc:
            log.error("device_reset_failed", device=dev.name, error=str(exc))

    def _threads_left(self) -> list[str]:
        """Threads started during this update, or given up on, that still run."""
        me = threading.current_thread()
        left = [
            t.name
            for t in threading.enumerate()
            if t is not me
            and t.is_alive()
            and (t not in self._threads_before or t in self._abandoned)
        ]
        for name in left:
            log.error("thread_left_behind", thread=name, reason="still running at kexec")
        return sorted(left)

    def _die(self, *, track: bool = False) -> Tracked:
        """Let go of everything this kernel owned; with ``track``, weak references to it,
        for the leak check."""
        tracked = self._owned() if track else []
        self._gone = True
        self.luo.die()
        self._link.close()
        # What a gone kernel keeps is what it booted from and who it was; the
        # rest goes, so that holding the old kernel holds nothing of its packs.
        for field in list(self.__dict__):
            if field not in _KEPT:
                del self.__dict__[field]
        return tracked

    def _owned(self) -> Tracked:
        """What this kernel and its packs made, by weak reference (where Python allows one)."""
        found: list[tuple[str, object]] = [("the plugin registry", self.registry)]
        for plugin in self.registry.pm.get_plugins():
            if type(plugin).__module__ != "builtins" and not isinstance(plugin, types.ModuleType):
                found.append((f"plugin {type(plugin).__qualname__}", plugin))
        for pack in self.registry.packs:
            for record in pack.records:
                ops = getattr(record, "ops", None)
                found.append((f"{type(record).__name__} {record.name}", record))
                if ops is not None:
                    found.append((f"ops of {record.name} ({type(ops).__qualname__})", ops))
        for sub in self._subsystems.values():
            found.append((f"ops of subsystem {sub.name}", sub.ops))
        for dev in self.devices.devices():
            found.append((f"device {dev.name}", dev))
            if dev.driver_data is not None:
                found.append((f"driver_data of {dev.name}", dev.driver_data))
        found += [(f"preserved value of {label(k)}", v) for k, v in self._preserved.values.items()]
        found += [("the device tree", self.devices), ("KHO", self.kho), ("the allocator", self.mm)]
        found.append(("LUO's sessions core", self.luo))
        for fh in self.luo.handlers():
            found.append(
                (f"ops of file handler {fh.compatible} ({type(fh.ops).__qualname__})", fh.ops)
            )
        for session in [*self.luo.outgoing, *self.luo.incoming]:
            found.append((f"session {session.name}", session))
        return list(_weak(found))

    def __getattr__(self, name: str) -> Any:
        # Only reached for fields _die removed: say why, not just AttributeError.
        if self.__dict__.get("_gone"):
            raise KernelGoneError(
                f"kernel.{name.lstrip('_')}: this kernel was replaced by kexec; "
                "use the one kexec() returned"
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


def _weak(found: Iterable[tuple[str, object]]) -> Iterable[tuple[str, weakref.ref[Any]]]:
    seen: set[int] = set()
    for what, obj in found:
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        try:
            yield what, weakref.ref(obj)
        except TypeError:  # ints, dicts, tuples...: nothing to track
            continue
