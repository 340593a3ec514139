"""The live-update phases of one kernel: prepare, freeze, cancel and finish, with rollback.

Prepare and freeze run the devices deepest first (children and consumers
before their parent and supplier), then the subsystems in registration order.
``cancel`` runs the devices in the reverse of that order, then the
subsystems in registration order, as the RFC does.  If participant *k* fails,
every other prepared participant gets ``cancel`` in that order, the failing
one gets none (but the driver of a device whose bus failed does), the state
is back to ``normal`` and :class:`~luo_core.errors.CallbackError` is raised.
Records are sealed as participants return them and written into KHO at the
end of each phase.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from luo_core.abi._stats import UpdateStats, now_ns
from luo_core.errors import CallbackError, InvalidTransitionError
from luo_core.kernel._base import KernelBase, log
from luo_core.kernel._handover import kho_owned, publish
from luo_core.kernel._orchestrator import PhaseRunner
from luo_core.kernel._participants import DEVICE, Key, device_key, label, subsystem_key
from luo_core.kernel._preflight import Manifest, build_manifest, plan_versions
from luo_core.kernel._records import DeviceDriver, Subsystem
from luo_core.kernel._state import Event, State
from luo_core.kernel.devices import Device, depth, freeze_graph

LOAD: Key = ("kexec", "load")
"""How the loading of the next kernel is named when it fails prepare."""


class Phases(KernelBase):
    """prepare, freeze, cancel and finish."""

    def prepare(
        self,
        timeout: float | None = None,
        *,
        target: Manifest | None = None,
        load: Callable[[], None] | None = None,
    ) -> None:
        """normal -> prepared: every participant serialises its state.

        ``load`` is the last step of prepare: it loads the next kernel (as
        ``kexec -l`` does) and raises if the next kernel cannot start; then
        prepare fails and is rolled back like a failed participant
        (``kexec:load``).

        With ``target`` (the next kernel's ABI manifest) every record is first
        checked: it is written at a version the target reads (through a
        rollback writer if need be), or :class:`~luo_core.errors.IncompatibleError`
        is raised before any callback runs.  If a participant fails, those
        that succeeded get ``cancel`` (in :meth:`cancel`'s order), the failing
        one gets none, the state is back to ``normal`` and
        :class:`~luo_core.errors.CallbackError` is raised.
        """
        self._alive()
        with self._sm.transition(Event.PREPARE, timeout) as new_state:
            versions = plan_versions(target, self._records()) if target is not None else {}
            self.stats = UpdateStats()
            self._threads_before = set(threading.enumerate())
            self._preserved.clear()
            self._preserved.versions.update(versions)
            self._prepared.clear()
            self._run_event(Event.PREPARE, self._steps.prepare, self._sub_steps.prepare, last=load)
            self.luo.prepare_entry(self.liveupdate_number + 1)  # off the kexec path
            self._publish()
            self._commit(Event.PREPARE, new_state)

    def freeze(
        self, timeout: float | None = None, *, first: Callable[[], None] | None = None
    ) -> None:
        """prepared -> frozen: the light, final step on the kexec path.

        On failure every prepared participant but the failing one gets
        ``cancel`` (in :meth:`cancel`'s order) and the state is back to
        ``normal``.  ``first`` runs before any participant, inside the
        blackout (kexec passes the sessions' freeze); if it raises, nothing
        has changed and the state stays ``prepared``.
        """
        self._alive()
        with self._sm.transition(Event.FREEZE, timeout) as target:
            stats = self._update_stats()
            stats.freeze_start_ns = now_ns()
            if first is not None:
                first()
            self._run_event(Event.FREEZE, self._steps.freeze, self._sub_steps.freeze)
            self._publish()
            self._commit(Event.FREEZE, target)

    def cancel(self, timeout: float | None = None) -> None:
        """prepared|frozen -> normal: every participant gets ``cancel``: the
        devices in the reverse of the order they prepared in (parents first),
        bus then driver, then the subsystems in registration order."""
        self._alive()
        with self._sm.transition(Event.CANCEL, timeout) as target:
            runner = self._start("cancel")
            self._cancel(runner, self._prepared)
            self._finish_phase(runner, ok=True)
            self._commit(Event.CANCEL, target)

    def finish(self, timeout: float | None = None) -> None:
        """updated -> normal: participants clean up.

        Every device handed over gets ``finish``, reclaimed or not, deepest
        first (devices at one depth in enumeration order), driver then bus;
        one never reclaimed is reported first (``device_not_reclaimed``).  A
        device whose restore failed was left without a driver, so only its
        bus's ``finish`` runs.  Then every subsystem, in registration order.
        """
        self._alive()
        with self._sm.transition(Event.FINISH, timeout) as target:
            runner = self._start("finish")
            handed = [d for d in self.devices.devices() if d.preserved]
            # device_liveupdate_finish(): the preserved devices in enumeration
            # order, stably sorted by depth, deepest first.
            position = {d: i for i, d in enumerate(sorted(handed, key=lambda d: -depth(d)))}

            def finish_device(dev: Device) -> None:
                if not dev.reclaimed:
                    log.warning("device_not_reclaimed", device=dev.name, driver=_driver(dev))
                runner.call_quietly(label(device_key(dev)), self._steps.finish, dev)

            runner.run_graph(
                freeze_graph(handed), finish_device, position.__getitem__, stop_on_error=False
            )
            for sub in self._subsystems.values():
                runner.call_quietly(label(subsystem_key(sub)), self._sub_steps.finish, sub)
            for dev in handed:
                self.devices.settle(dev)
            self._preserved.clear()
            self._incoming.clear()
            if self._handed is not None:  # the root and node blobs are no longer needed
                for area in kho_owned(self._handed):
                    self.mm.release(area.start, area.size)
                self._handed = None
            self._finish_phase(runner, ok=True)
            self._commit(Event.FINISH, target)

    def manifest(self) -> Manifest:
        """This kernel's ABI manifest (what ``luo manifest`` prints)."""
        return build_manifest(self.registry)

    # -- how prepare and freeze run ---------------------------------------------

    def _update_stats(self) -> UpdateStats:
        if self.stats is None:  # prepared means prepare made them
            raise InvalidTransitionError("no live update in progress")
        return self.stats

    def _run_event(
        self,
        event: Event,
        device_step: Callable[[Device], None],
        subsystem_step: Callable[[Subsystem], None],
        last: Callable[[], None] | None = None,
    ) -> None:
        """Run prepare or freeze: devices deepest first, then subsystems in
        registration order, then ``last``; on the first failure roll back and raise."""
        phase = event.value
        runner = self._start(phase)
        self._steps.bus_failed.clear()
        devices = [self.devices[name] for kind, name in self._participants() if kind == DEVICE]
        # The RFC walks its preserve list in order; luo runs the same list as
        # a graph (device links, workers), taking the earliest-listed device
        # of those ready.
        position = {dev: i for i, dev in enumerate(devices)}
        outcome = runner.run_graph(
            freeze_graph(devices),
            lambda d: runner.call(label(device_key(d)), device_step, d),
            position.__getitem__,
            stop_on_error=True,
        )
        failures: list[tuple[Key, Exception]] = [(device_key(d), e) for d, e in outcome.failed]
        if event is Event.PREPARE:
            self._prepared.extend(
                device_key(d) for d in sorted(outcome.succeeded, key=position.__getitem__)
            )
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
        if not failures and last is not None:
            try:
                runner.call(label(LOAD), last)
            except Exception as exc:
                failures.append((LOAD, exc))
        if failures:
            self._finish_phase(runner, ok=False)
            self._roll_back(event, failures)
            key, error = failures[0]
            raise CallbackError(label(key), phase, error) from error
        self._finish_phase(runner, ok=True)

    def _roll_back(self, event: Event, failures: list[tuple[Key, Exception]]) -> None:
        failed = {key for key, _ in failures}
        cancel = self._start("cancel")
        # A device whose bus failed after its driver succeeded: its driver's
        # cancel comes first, before the others' (err_cancel_bus).
        for key, _ in failures:
            if key[0] == DEVICE and key[1] in self._steps.bus_failed:
                dev = self.devices[key[1]]
                cancel.call_quietly(label(key), self._steps.cancel_driver, dev)
        self._cancel(cancel, [k for k in self._prepared if k not in failed])
        self._finish_phase(cancel, ok=True)
        self._commit(event, State.NORMAL, ok=False)

    def _publish(self) -> None:
        """Write every record that changed since it was last written into KHO
        (a device without a driver has none: it hands nothing over)."""
        for key in self._prepared:
            blob = self._preserved.sealed.get(key)
            if blob is None:
                continue
            if self._published.get(key) is not blob:
                publish(self.kho, key, self._preserved.compatibles[key], blob)
                self._published[key] = blob

    def _records(self) -> list[tuple[Key, Subsystem | DeviceDriver]]:
        """Who would hand over a record if the update started now."""
        found: list[tuple[Key, Subsystem | DeviceDriver]] = []
        for dev in self.devices.preserve_list():
            if dev.driver is not None:
                found.append((device_key(dev), dev.driver))
        found += [(subsystem_key(sub), sub) for sub in self._subsystems.values()]
        return found

    def _participants(self) -> list[Key]:
        if self.state is State.NORMAL:
            return [device_key(d) for d in self.devices.preserve_list()]
        return list(self._prepared)

    def _cancel(self, runner: PhaseRunner, prepared: Iterable[Key]) -> None:
        """Cancel ``prepared`` as the RFC does: the device layer first, walking
        its preserve list backwards, bus then driver per device
        (``__dev_liveupdate_cancel()``); then the subsystems in registration
        order (``__luo_do_subsystems_cancel_calls()``), as the notifier chain
        calls them after the device layer."""
        keys = list(prepared)
        for kind, name in reversed([k for k in keys if k[0] == DEVICE]):
            runner.call_quietly(label((kind, name)), self._steps.cancel, self.devices[name])
        for kind, name in [k for k in keys if k[0] != DEVICE]:
            sub = self._subsystems[name]
            runner.call_quietly(label((kind, name)), self._sub_steps.cancel, sub)
        self._preserved.clear()
        self._prepared.clear()
        self._published.clear()
        self.kho.clear()


def _driver(dev: Device) -> str:
    return dev.driver.name if dev.driver is not None else ""
