"""The next kernel's side of a live update: taking back what was handed over.

Subsystems with a record get ``boot``; preserved devices get ``restore``,
parents and suppliers first.  A device whose record is corrupted or
unreadable, or whose driver's restore fails, is left unbound, and so are the
devices depending on it: a device is never half restored.  luo's own
statistics from the old kernel are read only once the devices are back: they
are not worth a microsecond of blackout.
"""

from __future__ import annotations

from luo_core.abi import schema_of
from luo_core.abi._meta import read_meta
from luo_core.abi._stats import UpdateStats, now_ns
from luo_core.errors import HandoffError
from luo_core.kernel._base import KernelBase, log
from luo_core.kernel._handover import HandoffRecord
from luo_core.kernel._orchestrator import PhaseRunner
from luo_core.kernel._participants import DEVICE, Key, device_key, label, subsystem_key
from luo_core.kernel._records import DeviceDriver
from luo_core.kernel.devices import Device, restore_graph


class Restore(KernelBase):
    """Boot of the next kernel: restore, then the statistics, then probe the rest."""

    def _restore(
        self,
        meta: HandoffRecord | None,
        incoming: dict[Key, HandoffRecord],
        corrupted: set[Key],
    ) -> None:
        kexec_end = now_ns()
        self._incoming = incoming
        runner = self._start("restore")
        for sub in self._subsystems.values():
            found = incoming.get(subsystem_key(sub))
            if found is not None:
                runner.call_quietly(label(found.key), self._sub_steps.boot, sub, found.data)
        ok = self._restore_devices(runner, incoming, corrupted)
        restore_end = now_ns()
        try:
            if meta is None:
                raise HandoffError("the handoff has no meta record")
            stats = read_meta(meta.data)
        except HandoffError as exc:
            log.error("handoff_meta_malformed", error=str(exc))
            stats = UpdateStats()
        stats.migrations = sorted(self._preserved.migrated.values(), key=lambda m: m.participant)
        self.stats = stats
        kexec = stats.phases.get("kexec")
        if kexec is not None:
            kexec.end_ns = kexec_end
            self._observe("luo_phase_finished", phase="kexec", stats=kexec)
        stats.restore_end_ns = restore_end
        self._finish_phase(runner, ok=ok, end_ns=restore_end)
        log.info(
            "blackout", blackout_us=stats.blackout_us, liveupdate_number=self.liveupdate_number
        )
        self.devices.probe([d for d in self.devices.devices() if not d.preserved])

    def _restore_devices(
        self, runner: PhaseRunner, incoming: dict[Key, HandoffRecord], corrupted: set[Key]
    ) -> bool:
        """Mark handed-over devices preserved and restore them, parents first.

        Returns whether every restore succeeded.
        """
        handed: list[Device] = []
        for kind, name in sorted({*incoming, *corrupted}):
            if kind != DEVICE:
                continue
            if name not in self.devices:
                log.error("handed_over_device_missing", device=name)
                continue
            dev = self.devices[name]
            self.devices.hand_over(dev)
            handed.append(dev)

        def restore(dev: Device) -> None:
            record = incoming.get(device_key(dev))
            if record is None:
                raise HandoffError(f"the handoff record of {dev.name} is corrupted")
            driver = dev.driver
            if driver is None or _writes(driver) != record.compatible:
                # Bound to another driver than its compatible's (vfio-pci, say): the
                # driver that wrote the record restores it, if this kernel has it.
                dev.driver = self.devices.driver_for_record(record.compatible) or driver
            runner.call(label(device_key(dev)), self._steps.restore, dev, record.data)
            self.devices.reclaim(dev)

        outcome = runner.run_graph(
            restore_graph(handed), restore, lambda d: d.index, stop_on_error=False
        )
        for dev, exc in outcome.failed:
            dev.driver = None  # never leave a half-restored device bound
            log.error("restore_failed", device=dev.name, error=f"{type(exc).__name__}: {exc}")
        for dev in outcome.skipped:
            dev.driver = None
            log.error("restore_skipped", device=dev.name, reason="a dependency failed to restore")
        return not outcome.failed


def _writes(driver: DeviceDriver) -> str | None:
    """The compatible of the records ``driver`` writes."""
    return schema_of(driver.schema).compatible if driver.schema is not None else None
