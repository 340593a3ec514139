"""The kernel: one boot of the emulated host, and the live-update orchestrator in it.

A kernel is booted from its :class:`~luo_core.abi._boot.BootParams` alone —
the hardware's address, the machine description, the kernel configuration,
the KHO root — by :mod:`luo_core.kexec`, the only code that builds kernels.
Booting maps memory through the hardware link, attaches to the hardware,
reserves what the previous kernel preserved, builds the packs afresh and
enumerates the devices; then it restores what was handed over, or probes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from luo_core.abi import MemRange, read_root, unseal
from luo_core.abi._boot import BootParams, KernelConfig, PluginFactory
from luo_core.abi._kho import HandedOver
from luo_core.abi._luo import KHO_ENTRY
from luo_core.abi._machine import Machine
from luo_core.abi._stats import UpdateStats
from luo_core.abi._wire import plain
from luo_core.errors import CommandError, ExistsError, LiveUpdateError, NotFoundError
from luo_core.kernel._handover import boot_allocator, claim_memory, kho_owned, read_records
from luo_core.kernel._hwlink import HardwareLink
from luo_core.kernel._jump import META_KEY, Jump
from luo_core.kernel._kho import KexecHandover
from luo_core.kernel._orchestrator import PhaseRunner
from luo_core.kernel._participants import DeviceSteps, SubsystemSteps, label, subsystem_key
from luo_core.kernel._preserved import Preserved
from luo_core.kernel._records import Subsystem
from luo_core.kernel._registry import PluginSource, build_registry, load_image
from luo_core.kernel._restore import Restore
from luo_core.kernel._sessions import SessionsApi
from luo_core.kernel._state import State, StateMachine
from luo_core.kernel.devices import DeviceTree, _builtin
from luo_core.kernel.sessions import Luo, memfd_handler


def load_kernel_image(config: KernelConfig) -> list[PluginSource]:
    """The plugin factories a kernel with ``config`` boots from: luo's own, then the packs'."""
    return load_image(config.plugins, discover=config.discover, builtin=_builtin)


class Kernel(Jump, Restore, SessionsApi):
    """One boot of the host.  :meth:`Kernel.boot` cold-boots one; ``kexec()`` gives the next."""

    def __init__(
        self,
        params: BootParams,
        link: HardwareLink,
        *,
        power: object = None,
        image: Sequence[PluginSource] | None = None,
    ) -> None:
        """Boot from ``params`` over ``link`` (called by :mod:`luo_core.kexec` only).

        ``image`` is the configuration's plugin factories, already loaded (as
        ``kexec -l`` loads an image before the jump); the plugins are built
        from it now, afresh.
        """
        try:
            self._boot(params, link, power, image)
        except BaseException:
            link.close()  # a kernel that could not boot lets go of the hardware
            raise

    def _boot(
        self,
        params: BootParams,
        link: HardwareLink,
        power: object,
        image: Sequence[PluginSource] | None,
    ) -> None:
        self.params = params
        self.machine = params.machine
        """The machine description this kernel enumerated its devices from."""
        self.config = params.config
        self.kho_root = params.kho_root
        """Physical address of the KHO root this kernel booted from (``None``: cold boot)."""
        self._link = link
        self._power = power  # keeps hardware in this process powered while a kernel is used
        self.memory = link.memory
        """This kernel's own mapping of physical memory."""
        self.generation = link.attach()
        """Which kernel this is to the hardware: its accesses are fenced once another attaches."""
        scratch = MemRange(*self.machine.scratch)
        self.mm = boot_allocator(self.memory)
        """This kernel's page allocator: all memory but scratch and preserved ranges."""
        handed = read_root(self.memory, self.kho_root) if self.kho_root is not None else None
        claim_memory(self.mm, self.memory, scratch, handed)
        self.kho = KexecHandover(self.memory, self.mm, scratch)
        """Where participants preserve memory and where their records go."""
        self._gone = False
        self._abandoned = []
        self._threads_before = set()
        self.stats: UpdateStats | None = None
        """Timings of the current (or last) live update; ``None`` before any."""
        self.registry = build_registry(
            load_kernel_image(self.config) if image is None else image, kernel=self
        )
        self.luo = Luo(self.memory, self.mm, self.kho, handed)
        """The sessions side: ``/dev/liveupdate``, file handlers, FLBs."""
        self.luo.register_file_handler(
            memfd_handler(self.luo.outgoing_memory, self.luo.incoming_memory)
        )
        for fh in self.registry.file_handlers.values():
            self.luo.register_file_handler(fh)
        self._handed = handed
        incoming, corrupted = read_records(self.memory, handed) if handed else ({}, set())
        incoming.pop((KHO_ENTRY, ""), None)
        # A handoff with no participant record and no meta came from a plain kexec:
        # this kernel boots cold, but for the sessions handed over.
        live = bool(incoming or corrupted)
        self._sm = StateMachine(State.UPDATED if live else State.NORMAL)
        self._subsystems = dict(self.registry.subsystems)
        self._preserved = Preserved()
        self._incoming = {}
        self._prepared = []
        self._published = {}
        self._steps = DeviceSteps(self.registry.buses, self._preserved)
        self._sub_steps = SubsystemSteps(self._preserved)
        self.devices = DeviceTree(
            self.machine,
            link,
            self.registry.drivers,
            self.registry.buses,
            self._guard,
            dict(self.config.driver_override),
        )
        self.liveupdate_number = handed.liveupdate_number if handed is not None else 0
        """How many live updates led to this kernel (the root's ``liveupdate-number``)."""
        if not live:
            if handed is not None:
                for area in kho_owned(handed):  # the root, read: the sessions keep their own
                    self.mm.release(area.start, area.size)
                self._handed = None
            self.devices.probe(self.devices.devices())
        else:
            self._restore(incoming.pop(META_KEY, None), incoming, corrupted)

    @classmethod
    def boot(
        cls,
        machine: Machine | object,
        *,
        plugins: Sequence[PluginFactory] = (),
        discover: bool = True,
        workers: int = 1,
        callback_timeout: float | None = None,
        driver_override: Mapping[str, str] | None = None,
    ) -> Kernel:
        """Cold-boot a kernel in this process (state ``normal``).

        ``machine`` is a :class:`~luo_core.Machine` (its hardware is powered
        on in this process) or hardware already running
        (:class:`~luo_core.platform.Hardware`).  ``plugins`` are plugin
        factories: ``'module:attr'`` references, modules, or classes and
        functions that build a plugin; every boot builds them afresh.
        """
        from luo_core.kexec import boot

        config = KernelConfig(plugins, discover, workers, callback_timeout, driver_override or {})
        return boot(machine, config)

    def kexec(
        self,
        config: KernelConfig | None = None,
        *,
        check_leaks: bool = True,
        during_blackout: Callable[[], None] | None = None,
    ) -> Kernel:
        """Jump to the next kernel, in this process, and return it; this one is gone.

        From ``prepared`` this freezes first (freeze is on the kexec path).
        Devices not preserved are shut down and reset.  ``config`` chooses the
        next kernel's packs (default: the same as this one).  With
        ``check_leaks`` (the default) :class:`~luo_core.errors.KernelLeakError`
        is raised if anything the old kernel or its packs made is still
        reachable from the new one.  ``during_blackout`` runs when the old
        kernel is gone and the next one has not booted: no kernel exists.
        """
        from luo_core.kexec import kexec

        return kexec(self, config, check_leaks=check_leaks, during_blackout=during_blackout)

    def command(self, name: str, args: Mapping[str, Any] | None = None) -> object:
        """Run the pack command ``name`` (``luo_commands``) with ``args``; its plain-data result.

        ``ENOENT`` for an unknown command.  A command's own
        :class:`~luo_core.errors.LiveUpdateError` reaches the caller as it is;
        any other exception becomes a :class:`~luo_core.errors.CommandError`.
        """
        self._alive()
        found = self.registry.commands.get(name)
        if found is None:
            known = ", ".join(sorted(self.registry.commands)) or "none"
            raise NotFoundError(f"no command {name!r} (known: {known})")
        try:
            return plain(found.run(dict(args or {})))
        except LiveUpdateError:
            raise
        except Exception as exc:
            raise CommandError(name, exc) from exc

    @property
    def subsystems(self) -> dict[str, Subsystem]:
        """Registered subsystem participants, in registration order."""
        return dict(self._subsystems)

    @property
    def kho_in(self) -> HandedOver | None:
        """The KHO root the previous kernel left, as read at boot, until ``finish``
        releases it (``None`` after a cold boot or a plain kexec)."""
        return self._handed

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
