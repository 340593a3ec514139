"""What every part of a kernel shares: its fields, and the plumbing of phases and events.

:class:`~luo_core.Kernel` is split by job: booting (``_kernel``), restoring
what was handed over (``_restore``), the live-update phases (``_phases``) and
the old kernel's side of kexec (``_jump``).  Each is a mixin over this base,
which declares the fields they share and the helpers that open and close a
phase, commit a state and tell observers — who get data, never the kernel.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from luo_core._logging import get_logger
from luo_core.abi._boot import BootParams, KernelConfig
from luo_core.abi._machine import Machine
from luo_core.abi._stats import UpdateStats
from luo_core.errors import InvalidTransitionError, KernelGoneError
from luo_core.kernel._hookspecs import PROJECT
from luo_core.kernel._orchestrator import PhaseRunner
from luo_core.kernel._participants import DeviceSteps, Key, SubsystemSteps
from luo_core.kernel._preserved import Preserved
from luo_core.kernel._records import Subsystem
from luo_core.kernel._state import REGISTRATION_STATES, Event, State, StateMachine

if TYPE_CHECKING:
    from luo_core.abi._kho import HandedOver
    from luo_core.kernel._alloc import PageAllocator
    from luo_core.kernel._handover import HandoffRecord
    from luo_core.kernel._hwlink import HardwareLink
    from luo_core.kernel._kho import KexecHandover
    from luo_core.kernel._registry import PluginRegistry
    from luo_core.kernel.devices import DeviceTree
    from luo_core.kernel.sessions import Luo
    from luo_core.platform._memory import PhysicalMemory

log = get_logger(PROJECT)


class KernelBase:
    """The fields of one boot, and the helpers every phase uses."""

    params: BootParams
    machine: Machine
    config: KernelConfig
    kho_root: int | None
    generation: int
    liveupdate_number: int
    memory: PhysicalMemory
    mm: PageAllocator
    kho: KexecHandover
    registry: PluginRegistry
    devices: DeviceTree
    stats: UpdateStats | None
    _link: HardwareLink
    _power: object
    _sm: StateMachine
    _gone: bool
    _handed: HandedOver | None
    _subsystems: dict[str, Subsystem]
    _preserved: Preserved
    _incoming: dict[Key, HandoffRecord]
    _prepared: list[Key]
    _published: dict[Key, bytes]
    _steps: DeviceSteps
    _sub_steps: SubsystemSteps
    luo: Luo
    _abandoned: list[threading.Thread]
    _threads_before: set[threading.Thread]

    @property
    def state(self) -> State:
        """The global live-update :class:`~luo_core.State`."""
        return self._sm.state

    def _alive(self) -> None:
        if self._gone:
            raise KernelGoneError(
                "this kernel was replaced by kexec; use the one kexec() returned"
            )

    def _hold(self, what: str, timeout: float | None) -> Any:
        self._alive()
        return self._sm.hold(what, timeout, allowed=REGISTRATION_STATES)

    def _guard(self, what: str) -> Any:
        self._alive()
        return self._sm.hold(what, allowed=frozenset({State.NORMAL}), error=InvalidTransitionError)

    def _start(self, phase: str) -> PhaseRunner:
        runner = PhaseRunner(
            phase, self.config.workers, self.config.callback_timeout, self._abandoned, self._sm
        )
        self._observe("luo_phase_started", phase=phase)
        return runner

    def _finish_phase(self, runner: PhaseRunner, *, ok: bool, end_ns: int | None = None) -> None:
        stats = runner.close(ok, end_ns)
        if self.stats is not None:
            self.stats.phases[stats.phase] = stats
        log.info("phase", phase=stats.phase, ok=ok, duration_us=stats.duration_us)
        self._observe("luo_phase_finished", phase=stats.phase, stats=stats)

    def _commit(self, event: Event, new: State, *, ok: bool = True) -> None:
        """Enter ``new`` because of ``event`` (``ok=False``: a failed event rolled back)."""
        old = self.state
        self._sm.force(new)
        self._notify_state(old, new, event, ok=ok)

    def _notify_state(self, old: State, new: State, event: Event, *, ok: bool) -> None:
        log.info("state_changed", cause=event.value, old=old.value, new=new.value, ok=ok)
        self._observe("luo_state_changed", old=old, new=new, event=event)

    def _observe(self, hook_name: str, **kwargs: Any) -> None:
        self.registry.notify(hook_name, **kwargs)
