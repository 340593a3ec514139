"""The kernel: one boot of the emulated host, and the live-update orchestrator in it.

A ``Kernel`` owns the plugin registry, the device tree, the subsystem
participants and the global state machine.  ``kexec()`` ends it: every Python
object it owns is torn down, and the next kernel boots over the same machine
from the handoff bytes alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
import structlog

from luo_core.abi import MemRange, read_root, unseal
from luo_core.abi._meta import META_COMPATIBLE, read_meta, write_meta
from luo_core.abi._stats import UpdateStats, now_ns
from luo_core.errors import (
    CallbackError,
    ExistsError,
    HandoffError,
    InvalidTransitionError,
    KernelGoneError,
    NotFoundError,
)
from luo_core.kernel._handover import (
    HandoffRecord,
    boot_allocator,
    claim_memory,
    kho_owned,
    publish,
    read_records,
    restore_devices,
)
from luo_core.kernel._hookspecs import PROJECT
from luo_core.kernel._kho import KexecHandover
from luo_core.kernel._orchestrator import PhaseRunner
from luo_core.kernel._participants import (
    DEVICE,
    DeviceSteps,
    Key,
    SubsystemSteps,
    device_key,
    label,
    subsystem_key,
)
from luo_core.kernel._preflight import Manifest, build_manifest, plan_versions
from luo_core.kernel._preserved import Preserved
from luo_core.kernel._records import DeviceDriver, Subsystem
from luo_core.kernel._registry import PluginRegistry, load_plugins
from luo_core.kernel._state import REGISTRATION_STATES, Event, State, StateMachine
from luo_core.kernel.devices import Device, DeviceTree, _builtin, freeze_graph, restore_graph
from luo_core.platform import Machine

log = structlog.get_logger(PROJECT)
META_KEY = ("luo", "meta")


def _as_tuple(plugins: Iterable[object]) -> tuple[object, ...]:
    return tuple(plugins)


@attrs.frozen
class KernelConfig:
    """What a kernel image is made of: which packs it loads, how it schedules.

    ``plugins`` are registered after installed packs (``discover``), each as
    the distribution ``local:<name>``.  ``workers > 1`` runs independent
    device subtrees concurrently in every device phase.  ``callback_timeout``
    (seconds) gives up on a callback that does not return in time: it fails
    with :class:`CallbackTimeoutError` (``ETIMEDOUT``) as if it had raised.
    """

    plugins: tuple[object, ...] = attrs.field(default=(), converter=_as_tuple)
    discover: bool = True
    workers: int = 1
    callback_timeout: float | None = None


class Kernel:
    """One boot of the host.  Build one with :meth:`Kernel.boot`."""

    def __init__(
        self, machine: Machine, config: KernelConfig, kho_root: int | None = None
    ) -> None:
        self.machine = machine
        self.config = config
        self.kho_root = kho_root
        """Physical address of the KHO root this kernel booted from (``None``: cold boot)."""
        self.memory = machine.memory
        scratch = MemRange(*machine.scratch)
        self.mm = boot_allocator(self.memory)
        """This kernel's page allocator: all memory but scratch and preserved ranges."""
        handed = read_root(self.memory, kho_root) if kho_root is not None else None
        claim_memory(self.mm, scratch, handed)
        self.kho = KexecHandover(self.memory, self.mm, scratch)
        """Where participants preserve memory and where their records go."""
        self.registry: PluginRegistry = load_plugins(
            config.plugins, discover=config.discover, builtin=_builtin, kernel=self
        )
        self._handed = handed
        incoming, corrupted = read_records(self.memory, handed) if handed else ({}, set())
        self._sm = StateMachine(State.UPDATED if handed is not None else State.NORMAL)
        self._gone = False
        self._subsystems: dict[str, Subsystem] = dict(self.registry.subsystems)
        self._preserved = Preserved()
        self._incoming: dict[Key, HandoffRecord] = {}
        self._prepared: list[Key] = []
        self._published: dict[Key, bytes] = {}
        self._steps = DeviceSteps(self.registry.buses, self._preserved)
        self._sub_steps = SubsystemSteps(self._preserved)
        self.devices = DeviceTree(machine, self.registry.drivers, self.registry.buses, self._guard)
        self.stats: UpdateStats | None = None
        """Timings of the current (or last) live update; ``None`` before any."""
        self.liveupdate_number = handed.liveupdate_number if handed is not None else 0
        """How many live updates led to this kernel (the root's ``liveupdate-number``)."""
        if handed is None:
            self.devices.probe(self.devices.devices())
        else:
            self._boot_updated(incoming.pop(META_KEY, None), incoming, corrupted)

    @classmethod
    def boot(
        cls,
        machine: Machine,
        *,
        plugins: Sequence[object] = (),
        discover: bool = True,
        workers: int = 1,
    ) -> Kernel:
        """Cold-boot a kernel on ``machine`` (state ``normal``)."""
        return cls(machine, KernelConfig(plugins, discover, workers))

    @property
    def state(self) -> State:
        return self._sm.state

    @property
    def subsystems(self) -> dict[str, Subsystem]:
        """Registered subsystem participants, in registration order."""
        return dict(self._subsystems)

    def handed_over(self, kind: str, name: str) -> object | None:
        """What the previous kernel preserved for a participant, until ``finish``:
        the decoded value once its participant took it back, else the record's
        raw payload (``None`` if there is none)."""
        key = (kind, name)
        if self.state is not State.UPDATED:
            return None
        if key in self._preserved.values:
            return self._preserved.values[key]
        record = self._incoming.get(key)
        return unseal(record.data).payload if record is not None else None

    # -- participants ------------------------------------------------------

    def register_subsystem(self, subsystem: Subsystem, timeout: float | None = None) -> None:
        """Add a participant; ``EBUSY`` outside normal/updated, ``EEXIST`` if taken.

        In ``updated`` a subsystem with handed-over data gets ``boot`` at once.
        """
        with self._hold(f"register {subsystem.name}", timeout):
            if subsystem.name in self._subsystems:
                raise ExistsError(f"subsystem {subsystem.name!r} is already registered")
            self._subsystems[subsystem.name] = subsystem
            record = self._incoming.get(subsystem_key(subsystem))
            if self.state is State.UPDATED and record is not None:
                runner = PhaseRunner("restore")
                key = label(subsystem_key(subsystem))
                runner.call_quietly(key, self._sub_steps.boot, subsystem, record.data)

    def unregister_subsystem(self, name: str, timeout: float | None = None) -> None:
        """Remove a participant; ``ENOENT`` if unknown, ``EBUSY`` mid-update."""
        with self._hold(f"unregister {name}", timeout):
            if self._subsystems.pop(name, None) is None:
                raise NotFoundError(f"subsystem {name!r} is not registered")

    # -- events ----------------------------------------------------------

    def prepare(self, timeout: float | None = None, *, target: Manifest | None = None) -> None:
        """normal -> prepared: every participant serialises its state.

        With ``target`` (the next kernel's ABI manifest) every record is first
        checked: it is written at a version the target reads (through a
        rollback writer if need be), or :class:`IncompatibleError` is raised
        before any callback runs.  If a participant fails, those that
        succeeded get ``cancel`` in reverse order, the failing one gets none,
        the state is back to ``normal`` and :class:`CallbackError` is raised.
        """
        self._alive()
        with self._sm.transition(Event.PREPARE, timeout) as new_state:
            versions = plan_versions(target, self._records()) if target is not None else {}
            self.stats = UpdateStats()
            self._preserved.clear()
            self._preserved.versions.update(versions)
            self._prepared.clear()
            self._run_event(Event.PREPARE, self._steps.prepare, self._sub_steps.prepare)
            self._publish()
            self._commit(Event.PREPARE, new_state)

    def freeze(self, timeout: float | None = None) -> None:
        """prepared -> frozen: the light, final step on the kexec path.

        On failure every prepared participant but the failing one gets
        ``cancel`` (reverse order) and the state is back to ``normal``.
        """
        self._alive()
        with self._sm.transition(Event.FREEZE, timeout) as target:
            assert self.stats is not None
            self.stats.freeze_start_ns = now_ns()
            self._run_event(Event.FREEZE, self._steps.freeze, self._sub_steps.freeze)
            self._publish()
            self._commit(Event.FREEZE, target)

    def cancel(self, timeout: float | None = None) -> None:
        """prepared|frozen -> normal: every participant gets ``cancel``."""
        self._alive()
        with self._sm.transition(Event.CANCEL, timeout) as target:
            runner = self._start("cancel")
            self._cancel(runner, self._prepared)
            self._finish_phase(runner, ok=True)
            self._commit(Event.CANCEL, target)

    def finish(self, timeout: float | None = None) -> None:
        """updated -> normal: participants clean up; devices handed over but
        never reclaimed are reported (``device_not_reclaimed`` warnings)."""
        self._alive()
        with self._sm.transition(Event.FINISH, timeout) as target:
            runner = self._start("finish")
            handed = [d for d in self.devices.devices() if d.preserved]
            for dev in handed:
                if not dev.reclaimed:
                    log.warning("device_not_reclaimed", device=dev.name, driver=_driver(dev))
            reclaimed = [d for d in handed if d.reclaimed]
            runner.run_graph(
                restore_graph(reclaimed),
                lambda d: runner.call_quietly(label(device_key(d)), self._steps.finish, d),
                _index,
                stop_on_error=False,
            )
            for sub in self._subsystems.values():
                runner.call_quietly(label(subsystem_key(sub)), self._sub_steps.finish, sub)
            for dev in handed:
                dev._preserved = dev._reclaimed = False
            self._preserved.clear()
            self._incoming.clear()
            if self._handed is not None:  # the root and node blobs are no longer needed
                for area in kho_owned(self._handed):
                    self.mm.release(area.start, area.size)
                self._handed = None
            self._finish_phase(runner, ok=True)
            self._commit(Event.FINISH, target)

    def kexec(self, config: KernelConfig | None = None) -> Kernel:
        """Jump to the next kernel and return it; this one is gone afterwards.

        From ``prepared`` this freezes first (freeze is on the kexec path).
        Devices not preserved are shut down and reset.  ``config`` chooses the
        next kernel's packs (default: the same as this one).
        """
        self._alive()
        if self.state is State.PREPARED:
            self.freeze()
        with self._sm.hold("kexec"):
            if self.state is not State.FROZEN:
                raise InvalidTransitionError(
                    f"kexec: no live update in progress (state {self.state.value}); prepare first"
                )
            assert self.stats is not None
            runner = self._start("kexec")
            kept = {name for kind, name in self._prepared if kind == DEVICE}
            for dev in reversed(self.devices.devices()):
                if dev.name not in kept:
                    if dev.driver is not None:
                        runner.call_quietly(label(device_key(dev)), _shutdown, dev)
                    dev.hw.reset()
            self.stats.phases["kexec"] = runner.stats  # the next kernel closes it
            publish(self.kho, META_KEY, META_COMPATIBLE, write_meta(self.stats))
            root = self.kho.finalize(self.liveupdate_number + 1)
            self._die()
        return Kernel(self.machine, config or self.config, root.phys)

    # -- the phases --------------------------------------------------------

    def _run_event(
        self,
        event: Event,
        device_step: Callable[[Device], None],
        subsystem_step: Callable[[Subsystem], None],
    ) -> None:
        """Run prepare or freeze: devices deepest first, then subsystems in
        registration order; on the first failure roll back and raise."""
        phase = event.value
        runner = self._start(phase)
        devices = [self.devices[name] for kind, name in self._participants() if kind == DEVICE]
        outcome = runner.run_graph(
            freeze_graph(devices),
            lambda d: runner.call(label(device_key(d)), device_step, d),
            lambda d: -d.index,
            stop_on_error=True,
        )
        failures: list[tuple[Key, Exception]] = [(device_key(d), e) for d, e in outcome.failed]
        if event is Event.PREPARE:
            self._prepared.extend(device_key(d) for d in outcome.succeeded)
        if not failures:
            for sub in self._subsystems.values():
                key = subsystem_key(sub)
                try:
                    runner.call(label(key), subsystem_step, sub)
                except Exception as exc:
                    failures.append((key, exc))
                    break
                if event is Event.PREPARE:
                    self._prepared.append(key)
        if failures:
            self._finish_phase(runner, ok=False)
            failed = {key for key, _ in failures}
            cancel = self._start("cancel")
            self._cancel(cancel, [k for k in self._prepared if k not in failed])
            self._finish_phase(cancel, ok=True)
            old = self.state
            self._sm.force(State.NORMAL)
            self._notify_state(old, State.NORMAL, event, ok=False)
            key, error = failures[0]
            raise CallbackError(label(key), phase, error) from error
        self._finish_phase(runner, ok=True)

    def _publish(self) -> None:
        """Write every record that changed since it was last written into KHO."""
        for key in self._prepared:
            blob = self._preserved.sealed[key]
            if self._published.get(key) is not blob:
                publish(self.kho, key, self._preserved.compatibles[key], blob)
                self._published[key] = blob

    def manifest(self) -> Manifest:
        """This kernel's ABI manifest (what ``luo manifest`` prints)."""
        return build_manifest(self.registry)

    def _records(self) -> list[tuple[Key, Subsystem | DeviceDriver]]:
        """Who would hand over a record if the update started now."""
        found: list[tuple[Key, Subsystem | DeviceDriver]] = []
        for dev in self.devices.requested():
            assert dev.driver is not None
            found.append((device_key(dev), dev.driver))
        found += [(subsystem_key(sub), sub) for sub in self._subsystems.values()]
        return found

    def _participants(self) -> list[Key]:
        if self.state is State.NORMAL:
            return [device_key(d) for d in self.devices.requested()]
        return list(self._prepared)

    def _cancel(self, runner: PhaseRunner, prepared: Iterable[Key]) -> None:
        for key in reversed(list(prepared)):
            kind, name = key
            if kind == DEVICE:
                dev = self.devices[name]
                runner.call_quietly(label(key), self._steps.cancel, dev)
            else:
                runner.call_quietly(label(key), self._sub_steps.cancel, self._subsystems[name])
        self._preserved.clear()
        self._prepared.clear()
        self._published.clear()
        self.kho.clear()

    def _boot_updated(
        self,
        meta: HandoffRecord | None,
        incoming: dict[Key, HandoffRecord],
        corrupted: set[Key],
    ) -> None:
        """Next-kernel boot: subsystems get ``boot``, preserved devices get
        ``restore`` (parents first); the rest are probed afresh.

        luo's own statistics from the old kernel are read only once the
        devices are back: they are not worth a microsecond of blackout.
        """
        kexec_end = now_ns()
        self._incoming = incoming
        runner = self._start("restore")
        for sub in self._subsystems.values():
            found = incoming.get(subsystem_key(sub))
            if found is not None:
                runner.call_quietly(label(found.key), self._sub_steps.boot, sub, found.data)
        ok = restore_devices(runner, self.devices, self._steps, incoming, corrupted)
        restore_end = now_ns()
        try:
            if meta is None:
                raise HandoffError("the handoff has no meta record")
            stats = read_meta(meta.data)
        except HandoffError as exc:
            log.error("handoff_meta_malformed", error=str(exc))
            stats = UpdateStats()
        self.stats = stats
        kexec = stats.phases.get("kexec")
        if kexec is not None:
            kexec.end_ns = kexec_end
            self._observe("luo_phase_finished", kernel=self, phase="kexec", stats=kexec)
        stats.restore_end_ns = restore_end
        self._finish_phase(runner, ok=ok, end_ns=restore_end)
        log.info(
            "blackout", blackout_us=stats.blackout_us, liveupdate_number=self.liveupdate_number
        )
        self.devices.probe([d for d in self.devices.devices() if not d.preserved])

    # -- plumbing --------------------------------------------------------

    def _alive(self) -> None:
        if self._gone:
            raise KernelGoneError(
                "this kernel was replaced by kexec; use the one kexec() returned"
            )

    def _die(self) -> None:
        """Lose every Python object this kernel owned, as a real kexec would."""
        self._gone = True
        for dev in self.devices.devices():
            dev.driver_data = None
            dev.driver = None
        self._preserved.clear()
        self._subsystems.clear()
        self._prepared.clear()

    def _hold(self, what: str, timeout: float | None) -> Any:
        self._alive()
        return self._sm.hold(what, timeout, allowed=REGISTRATION_STATES)

    def _guard(self, what: str) -> Any:
        self._alive()
        return self._sm.hold(what, allowed=frozenset({State.NORMAL}), error=InvalidTransitionError)

    def _start(self, phase: str) -> PhaseRunner:
        runner = PhaseRunner(phase, self.config.workers, self.config.callback_timeout)
        self._observe("luo_phase_started", kernel=self, phase=phase)
        return runner

    def _finish_phase(self, runner: PhaseRunner, *, ok: bool, end_ns: int | None = None) -> None:
        stats = runner.close(ok, end_ns)
        if self.stats is not None:
            self.stats.phases[stats.phase] = stats
        log.info("phase", phase=stats.phase, ok=ok, duration_us=stats.duration_us)
        self._observe("luo_phase_finished", kernel=self, phase=stats.phase, stats=stats)

    def _commit(self, event: Event, new: State) -> None:
        old = self.state
        self._sm.force(new)
        self._notify_state(old, new, event, ok=True)

    def _notify_state(self, old: State, new: State, event: Event, *, ok: bool) -> None:
        log.info("state_changed", cause=event.value, old=old.value, new=new.value, ok=ok)
        self._observe("luo_state_changed", kernel=self, old=old, new=new, event=event)

    def _observe(self, hook_name: str, **kwargs: Any) -> None:
        self.registry.notify(hook_name, **kwargs)


def _shutdown(dev: Device) -> None:
    assert dev.driver is not None
    dev.driver.ops.shutdown(dev)


def _driver(dev: Device) -> str:
    return dev.driver.name if dev.driver is not None else ""


def _index(dev: Device) -> int:
    return dev.index
